//! The task router: for the text of a task, it recommends agents from the registry by their capability
//! tags, each with a score, a confidence and the reasons. It informs, it does not decide: the
//! orchestrator (or a person) picks, and the reasons say why the router thinks so.
//!
//! # How the score works
//! Tags and text go through the same analysis: lower-cased, split on anything that is not a letter or
//! a digit (so `code-review`, `unit_test`, `role:debugger` and "dead link" all split), and each word
//! reduced to its Snowball English stem, so that "tests", "testing" and "tested" all read `test`. A tag
//! `role:<name>` contributes the words of `<name>` only.
//!
//! Each agent *owns* stems and phrases, each with a weight:
//! - the stem of a one-word tag: `idf`; a word of a multi-word tag: [`COMPONENT_WEIGHT`] `× idf`;
//! - a multi-word tag as a phrase (its stems in a row): [`PHRASE_WEIGHT`] `× idf(phrase)` plus the
//!   weights of its words. Words that a phrase covers in the text count through the phrase only, so
//!   only for the agents that own it: "code review" is no evidence for an agent tagged `code`;
//! - the related words of [`RELATED`] (or of the lexicon given to [`Router::with_related`]) of each
//!   stem it owns: [`RELATED_WEIGHT`] times that stem's weight (a related phrase: `RELATED_WEIGHT ×
//!   (1 + PHRASE_WEIGHT) × idf(phrase)`).
//!
//! `idf` is BM25's inverse document frequency across the candidates, `ln(1 + (N - df + 0.5) / (df +
//! 0.5))`: what every agent owns counts almost nothing, what one agent owns counts most. An agent's
//! score is the sum, over what it owns, of `weight × damp(tf)`, where `tf` adds for each occurrence in
//! the text a lead weight `1 + LEAD_BONUS / (1 + position / LEAD_SPAN)` (the opening words of a task
//! usually say what it is, later ones give context), and `damp(x) = 1 + ln(x)` from 1 on, so that
//! repetition counts less and less. A word that does not match a stem exactly may still match it
//! *partly* (the occurrence counts [`PARTIAL_WEIGHT`]) when both reduce to the same root of at least
//! [`MIN_ROOT`] letters by dropping an ending that Snowball keeps ([`ENDINGS`], or a doubled
//! consonant): `tester`/`test`, `failure`/`fail`, `linter`/`lint`, `debugger`/`debug`, not
//! `plant`/`plan`.
//!
//! Every agent with a positive score is a candidate; there is no cut-off, the confidence says how
//! much to trust it. The confidence is `strength × rivalry`: `strength = 1 - exp(-score / s0)`, with
//! `s0` the idf of a stem that one agent owns, says how much evidence there is (one exact match of
//! such a stem gives at least 0.63), and `rivalry = score / (score + rival)` is the Bradley–Terry
//! chance that this agent rather than its strongest rival fits, the rival of the best agent being the
//! runner-up and that of any other agent the best one: a tie gives 0.5, a clear lead nears 1.
//!
//! # Cost
//! Everything about the candidates is precomputed in [`Router::new`]. [`Router::recommend`] is one
//! pass over the text; each distinct word is analysed once, with a few hash lookups, and is not even
//! stemmed when its first letters begin no known stem (most words). Its output depends only on its
//! inputs; ties are broken by name.

use std::collections::{HashMap, HashSet};

use rust_stemmers::{Algorithm, Stemmer};

/// The weight of a word that only occurs inside a multi-word tag, relative to a one-word tag.
pub const COMPONENT_WEIGHT: f64 = 0.5;
/// The weight of a multi-word tag found as a phrase, on top of the weights of its words.
pub const PHRASE_WEIGHT: f64 = 0.5;
/// The weight of a related word (see [`RELATED`]), relative to the word it relates to.
pub const RELATED_WEIGHT: f64 = 0.5;
/// The weight of a partial match, relative to an exact stem match.
pub const PARTIAL_WEIGHT: f64 = 0.5;
/// The extra weight of the first word of a text; it halves at [`LEAD_SPAN`] words.
pub const LEAD_BONUS: f64 = 1.0;
/// See [`LEAD_BONUS`].
pub const LEAD_SPAN: f64 = 8.0;
/// The fewest letters of the root that a partial match shares.
pub const MIN_ROOT: usize = 4;
/// Endings that stems may still carry and that a partial match drops (`tester`, `failur`, `flaki`,
/// `coder`, `panick`, `prioritis`).
pub const ENDINGS: &[&str] = &[
    "er", "or", "ur", "ar", "is", "iz", "e", "i", "y", "s", "r", "k",
];

/// The built-in lexicon: for a word an agent's tags contain, words and phrases of software work that
/// mean nearly the same, so that "retro" finds `retrospective` and "bump" finds `dependencies`. Keys
/// and words go through the same analysis as tags; an agent has a key when its tags have every stem
/// of it.
pub const RELATED: &[(&str, &[&str])] = &[
    // Writing code.
    ("implement", &["introduce", "develop", "support"]),
    ("feature", &["functionality"]),
    (
        "refactor",
        &["restructure", "extract", "simplify", "cleanup", "clean up"],
    ),
    ("api", &["http", "rest", "handler", "route"]),
    ("endpoint", &["route", "handler"]),
    ("function", &["method", "helper"]),
    ("code", &["source", "module"]),
    // Testing.
    (
        "test",
        &[
            "untested",
            "mock",
            "fixture",
            "property based",
            "end to end",
            "e2e",
        ],
    ),
    ("coverage", &["untested", "uncovered", "exercised"]),
    ("assertion", &["assert", "expect"]),
    // Debugging.
    (
        "debug",
        &[
            "investigate",
            "reproduce",
            "diagnose",
            "bisect",
            "root cause",
            "hang",
            "deadlock",
            "leak",
        ],
    ),
    ("bug", &["defect", "wrong", "incorrect"]),
    ("crash", &["segfault", "abort", "oom", "killed", "overflow"]),
    ("error", &["exception", "500"]),
    ("triage", &["reproduce", "label", "severity"]),
    // Reviewing.
    (
        "review",
        &[
            "pr",
            "pull request",
            "diff",
            "feedback",
            "look over",
            "second pair of eyes",
        ],
    ),
    ("approve", &["lgtm", "sign off", "request changes"]),
    (
        "style",
        &["naming", "readability", "idiomatic", "house style"],
    ),
    // CI and builds.
    ("ci", &["github actions", "job", "nightly", "green", "red"]),
    ("build", &["compile", "compiler", "linker", "toolchain"]),
    ("lint", &["clippy", "rustfmt", "fmt", "warning"]),
    (
        "flaky",
        &[
            "intermittent",
            "flake",
            "nondeterministic",
            "sometimes fails",
        ],
    ),
    (
        "dependencies",
        &[
            "bump",
            "upgrade",
            "outdated",
            "dependabot",
            "renovate",
            "crate version",
        ],
    ),
    // Specs and links.
    ("markdown", &["md"]),
    ("link", &["anchor", "url", "href", "404"]),
    ("spec", &["specification", "schema"]),
    // Documentation.
    (
        "docs",
        &["document", "explain", "doc comment", "tutorial", "how to"],
    ),
    (
        "documentation",
        &["document", "explain", "overview", "page"],
    ),
    (
        "guide",
        &["tutorial", "walkthrough", "how to", "onboarding"],
    ),
    ("changelog", &["release notes"]),
    ("readme", &["quick start", "getting started"]),
    // Planning.
    ("plan", &["phase", "schedule", "break down"]),
    ("milestone", &["epic", "deadline"]),
    ("roadmap", &["quarter", "release plan"]),
    (
        "priority",
        &[
            "prioritise",
            "prioritize",
            "trade off",
            "must have",
            "order",
        ],
    ),
    ("strategy", &["direction", "vision"]),
    // Looking back.
    (
        "retrospective",
        &[
            "retro",
            "post mortem",
            "postmortem",
            "lessons learned",
            "went well",
            "sprint review",
        ],
    ),
    (
        "metrics",
        &["kpi", "stats", "statistics", "lead time", "failure rate"],
    ),
    ("insight", &["learn", "takeaway", "lesson"]),
    ("action-item", &["follow up", "owner"]),
    // Version control.
    ("git", &["repository", "history", "push", "pull"]),
    ("commit", &["squash", "amend", "fixup", "cherry pick"]),
    ("branch", &["rebase", "checkout", "force push"]),
    ("merge", &["conflict", "rebase"]),
];

/// At most this many matched words are quoted in one reason.
const MAX_QUOTED: usize = 5;

/// An agent as the router sees it: its registered name and capability tags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The agent's registered name.
    pub name: String,
    /// Free capability tags such as `test`, `code-review` or `role:debugger`.
    pub capabilities: Vec<String>,
}

/// One recommended agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recommendation {
    /// The agent's registered name.
    pub agent: String,
    /// The raw score (higher is better), rounded to 4 decimals so that it serialises stably.
    pub score: f64,
    /// 0..=1: how sure the router is that this agent, rather than its strongest rival, fits (evidence
    /// strength times the Bradley–Terry share against the rival, see the module doc); rounded to 4
    /// decimals.
    pub confidence: f64,
    /// Why, one line per capability that contributed, largest contribution first, e.g.
    /// ``capability `test` matched "tests", "testing" (+2.35)``; a quoted word is marked `(related)`
    /// when it came from the lexicon and `(partly)` when it matched by its root only.
    pub reasons: Vec<String>,
}

/// A stem or a phrase that an agent owns.
#[derive(Debug, Clone)]
struct Owned {
    /// Index into the stems or into [`Router::phrases`].
    id: usize,
    /// Index into the agent's tags: the tag it comes from.
    tag: usize,
    /// `w × idf`, see the module doc.
    weight: f64,
    /// Whether it came from the lexicon rather than from the tag itself.
    related: bool,
}

/// One agent in the index.
#[derive(Debug, Clone)]
struct Agent {
    name: String,
    tags: Vec<String>,
    stems: Vec<Owned>,
    phrases: Vec<Owned>,
}

/// The precomputed index of the candidates' tags; build once with [`Router::new`], query often.
#[derive(Debug, Clone)]
pub struct Router {
    /// Stem → stem id.
    by_stem: HashMap<String, usize>,
    /// The [`key`]s of all stems: a word none of whose keys is here matches nothing, so it is not
    /// even stemmed (most words of a text are not).
    keys: HashSet<[char; 3]>,
    /// Root → the ids of the stems that reduce to it (see [`roots`]).
    by_root: HashMap<String, Vec<usize>>,
    /// Phrase id → its stem ids in order.
    phrases: Vec<Vec<usize>>,
    /// Stem id → the phrases that start with it.
    phrases_by_first: Vec<Vec<usize>>,
    agents: Vec<Agent>,
    /// `s0` of the confidence: the idf of a stem that one agent owns.
    strength_scale: f64,
}

/// BM25's inverse document frequency: positive, small when every candidate has it.
fn idf(candidates: usize, df: usize) -> f64 {
    let (n, df) = (candidates as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// `1 + ln(x)` for `x >= 1`, linear below (partial matches count fractions).
fn damp(x: f64) -> f64 {
    if x >= 1.0 { 1.0 + x.ln() } else { x.max(0.0) }
}

/// The weight of an occurrence at `position` (0 for the first word).
fn lead(position: usize) -> f64 {
    1.0 + LEAD_BONUS / (1.0 + position as f64 / LEAD_SPAN)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The words of `text` as byte ranges of the lower-cased text (which is returned alongside).
fn words(text: &str) -> (String, Vec<(usize, usize)>) {
    let lower = text.to_lowercase();
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in lower.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, lower.len()));
    }
    (lower, spans)
}

/// The stems of a text's words, in order.
fn stems_of(stemmer: &Stemmer, text: &str) -> Vec<String> {
    let (lower, spans) = words(text);
    spans
        .iter()
        .map(|&(s, e)| stemmer.stem(&lower[s..e]).into_owned())
        .collect()
}

/// The stems of a tag's words; a `role:<name>` tag gives the stems of `<name>`.
fn tag_stems(stemmer: &Stemmer, tag: &str) -> Vec<String> {
    let mut stems = stems_of(stemmer, tag);
    if stems.len() > 1 && stems[0] == "role" {
        stems.remove(0);
    }
    stems
}

/// The first `len` (at most 3) letters of a word, `y`, `i` and `e` after the first read as one
/// letter, padded with NUL. Snowball English changes endings; at the start of a word it only turns
/// `y` into `i` and `i` into `e` (`dying` → `die`, `using` → `use`, `try` → `tri`). So a word's key
/// of length `min(3, stem length)` is its stem's (checked against the 29,403 words of Snowball's
/// English test vocabulary), and two stems sharing a root of [`MIN_ROOT`] letters share their key.
fn key(word: &str, len: usize) -> [char; 3] {
    let mut key = ['\0'; 3];
    for (i, c) in word.chars().take(len.min(3)).enumerate() {
        key[i] = if i > 0 && matches!(c, 'y' | 'i' | 'e') {
            'i'
        } else {
            c
        };
    }
    key
}

/// `s` without a doubled final consonant (`debugg` → `debug`), if it has one.
fn undoubled(s: &str) -> Option<&str> {
    let mut rev = s.char_indices().rev();
    let (i, last) = rev.next()?;
    let (_, before) = rev.next()?;
    (last == before && !"aeiouy".contains(last)).then(|| &s[..i])
}

/// The stem itself and the roots it reduces to by dropping one of [`ENDINGS`] and/or a doubled final
/// consonant, each of at least [`MIN_ROOT`] letters. Two stems match partly when they share one.
fn roots(stem: &str) -> Vec<&str> {
    fn push<'s>(root: &'s str, out: &mut Vec<&'s str>) {
        if root.chars().count() >= MIN_ROOT && !out.contains(&root) {
            out.push(root);
        }
    }
    let mut out = vec![stem];
    let bases = std::iter::once(stem).chain(ENDINGS.iter().filter_map(|e| stem.strip_suffix(e)));
    for base in bases {
        push(base, &mut out);
        if let Some(root) = undoubled(base) {
            push(root, &mut out);
        }
    }
    out
}

/// What the text matched, per stem and per phrase, with the words that matched.
#[derive(Debug)]
struct Matches<'t> {
    /// Stem id → the lead-weighted occurrences (partial ones times [`PARTIAL_WEIGHT`]).
    tf: Vec<f64>,
    /// Stem id → the (lower-cased) words that matched it, distinct, first first, and whether partly.
    words: Vec<Vec<(&'t str, bool)>>,
    /// Phrase id → the lead-weighted occurrences.
    phrase_tf: Vec<f64>,
    /// Phrase id → the spans of text that matched it, distinct.
    phrase_words: Vec<Vec<&'t str>>,
}

fn push_distinct<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// What one agent owns while the index is being built: `(id, tag, w, related)`.
type Draft = Vec<(usize, usize, f64, bool)>;

/// Records that an agent owns `id` from `tag` with `w`, keeping the strongest source of each id.
fn own(draft: &mut Draft, id: usize, tag: usize, w: f64, related: bool) {
    match draft.iter_mut().find(|entry| entry.0 == id) {
        Some(entry) if entry.2 < w => *entry = (id, tag, w, related),
        Some(_) => {}
        None => draft.push((id, tag, w, related)),
    }
}

/// Interns stems and phrases while the index is being built.
#[derive(Default)]
struct Interner {
    by_stem: HashMap<String, usize>,
    phrases: Vec<Vec<usize>>,
    by_phrase: HashMap<Vec<usize>, usize>,
}

impl Interner {
    fn stem(&mut self, stem: String) -> usize {
        let next = self.by_stem.len();
        *self.by_stem.entry(stem).or_insert(next)
    }

    fn phrase(&mut self, ids: Vec<usize>) -> usize {
        let next = self.phrases.len();
        let id = *self.by_phrase.entry(ids.clone()).or_insert(next);
        if id == next {
            self.phrases.push(ids);
        }
        id
    }
}

impl Router {
    /// Builds the index of `candidates`' tags, with the built-in lexicon [`RELATED`]. Candidates
    /// without any usable tag are kept but never recommended; duplicate tags are harmless.
    pub fn new(candidates: &[Candidate]) -> Self {
        Self::with_related(candidates, RELATED)
    }

    /// Like [`Router::new`] with another lexicon of related words (`&[]` for none): for each key, the
    /// words and phrases that an agent whose tags contain the key also answers to, at
    /// [`RELATED_WEIGHT`].
    pub fn with_related(candidates: &[Candidate], related: &[(&str, &[&str])]) -> Self {
        let stemmer = Stemmer::create(Algorithm::English);
        let mut interner = Interner::default();

        // The lexicon, analysed: (the stems of a key, the stems of each of its related words).
        let mut lexicon: Vec<(Vec<String>, Vec<Vec<usize>>)> = Vec::new();
        for (word, related_words) in related {
            let stems = stems_of(&stemmer, word);
            if stems.is_empty() {
                continue;
            }
            let entries = related_words
                .iter()
                .map(|w| {
                    stems_of(&stemmer, w)
                        .into_iter()
                        .map(|s| interner.stem(s))
                        .collect()
                })
                .collect();
            lexicon.push((stems, entries));
        }

        let mut drafts: Vec<(Draft, Draft)> = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            let (mut stems, mut phrases) = (Draft::new(), Draft::new());
            for (tag, text) in candidate.capabilities.iter().enumerate() {
                let ids: Vec<usize> = tag_stems(&stemmer, text)
                    .into_iter()
                    .map(|s| interner.stem(s))
                    .collect();
                let w = if ids.len() == 1 {
                    1.0
                } else {
                    COMPONENT_WEIGHT
                };
                for &id in &ids {
                    own(&mut stems, id, tag, w, false);
                }
                if ids.len() > 1 {
                    let pid = interner.phrase(ids);
                    own(&mut phrases, pid, tag, PHRASE_WEIGHT, false);
                }
            }
            let direct: Vec<(usize, usize, f64)> =
                stems.iter().map(|&(id, tag, w, _)| (id, tag, w)).collect();
            for (key, entries) in &lexicon {
                // The agent owns every stem of the key; the first one names the tag and the weight.
                let owned: Option<Vec<(usize, usize, f64)>> = key
                    .iter()
                    .map(|stem| {
                        let id = interner.by_stem.get(stem)?;
                        direct.iter().find(|d| d.0 == *id).copied()
                    })
                    .collect();
                let Some(&(_, tag, w)) = owned.as_deref().and_then(<[_]>::first) else {
                    continue;
                };
                for ids in entries {
                    match ids.as_slice() {
                        [] => {}
                        [id] => own(&mut stems, *id, tag, RELATED_WEIGHT * w, true),
                        _ => {
                            let pid = interner.phrase(ids.clone());
                            own(
                                &mut phrases,
                                pid,
                                tag,
                                RELATED_WEIGHT * (1.0 + PHRASE_WEIGHT),
                                true,
                            );
                        }
                    }
                }
            }
            drafts.push((stems, phrases));
        }

        let n = candidates.len();
        let mut stem_df = vec![0usize; interner.by_stem.len()];
        let mut phrase_df = vec![0usize; interner.phrases.len()];
        for (stems, phrases) in &drafts {
            stems.iter().for_each(|o| stem_df[o.0] += 1);
            phrases.iter().for_each(|o| phrase_df[o.0] += 1);
        }
        let finish = |draft: Draft, df: &[usize]| -> Vec<Owned> {
            draft
                .into_iter()
                .map(|(id, tag, w, related)| Owned {
                    id,
                    tag,
                    weight: w * idf(n, df[id]),
                    related,
                })
                .collect()
        };
        let agents = candidates
            .iter()
            .zip(drafts)
            .map(|(candidate, (stems, phrases))| {
                let stems = finish(stems, &stem_df);
                let mut phrases = finish(phrases, &phrase_df);
                // A phrase takes over the words it covers: it carries their weights for its owner.
                for phrase in &mut phrases {
                    for id in &interner.phrases[phrase.id] {
                        phrase.weight +=
                            stems.iter().find(|o| o.id == *id).map_or(0.0, |o| o.weight);
                    }
                }
                Agent {
                    name: candidate.name.clone(),
                    tags: candidate.capabilities.clone(),
                    stems,
                    phrases,
                }
            })
            .collect();

        let keys = interner.by_stem.keys().map(|stem| key(stem, 3)).collect();
        let mut by_root: HashMap<String, Vec<usize>> = HashMap::new();
        for (stem, &id) in &interner.by_stem {
            for root in roots(stem) {
                by_root.entry(root.to_owned()).or_default().push(id);
            }
        }
        // Hash maps iterate in no fixed order: fix it, so that reasons list words the same way each run.
        by_root.values_mut().for_each(|ids| ids.sort_unstable());

        let mut phrases_by_first = vec![Vec::new(); interner.by_stem.len()];
        for (pid, ids) in interner.phrases.iter().enumerate() {
            if let Some(&first) = ids.first() {
                phrases_by_first[first].push(pid);
            }
        }

        Router {
            by_stem: interner.by_stem,
            keys,
            by_root,
            phrases: interner.phrases,
            phrases_by_first,
            agents,
            strength_scale: idf(n.max(1), 1),
        }
    }

    /// Best first, at most `limit`; only agents with a positive score; ties broken by name so the
    /// result is deterministic. An empty text, or one that mentions nothing any agent owns, gives
    /// nothing.
    pub fn recommend(&self, text: &str, limit: usize) -> Vec<Recommendation> {
        if limit == 0 || self.agents.is_empty() {
            return Vec::new();
        }
        let (lower, spans) = words(text);
        let matches = self.matches(&lower, &spans);

        let mut scored: Vec<(f64, usize)> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, agent)| (round4(self.score(agent, &matches)), i))
            .filter(|&(score, _)| score > 0.0)
            .collect();
        scored.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.agents[a.1].name.cmp(&self.agents[b.1].name))
                .then(a.1.cmp(&b.1))
        });

        let best = scored.first().map_or(0.0, |s| s.0);
        let runner_up = scored.get(1).map_or(0.0, |s| s.0);
        scored
            .iter()
            .take(limit)
            .enumerate()
            .map(|(rank, &(score, i))| {
                let rival = if rank == 0 { runner_up } else { best };
                let strength = 1.0 - (-score / self.strength_scale).exp();
                let confidence = strength * score / (score + rival);
                let agent = &self.agents[i];
                Recommendation {
                    agent: agent.name.clone(),
                    score,
                    confidence: round4(confidence.clamp(0.0, 1.0)),
                    reasons: Self::reasons(agent, &matches),
                }
            })
            .collect()
    }

    /// One pass over the words: exact and partial stem matches, then phrases.
    fn matches<'t>(&self, lower: &'t str, spans: &[(usize, usize)]) -> Matches<'t> {
        let stemmer = Stemmer::create(Algorithm::English);
        let stems = self.by_stem.len();
        let mut m = Matches {
            tf: vec![0.0; stems],
            words: vec![Vec::new(); stems],
            phrase_tf: vec![0.0; self.phrases.len()],
            phrase_words: vec![Vec::new(); self.phrases.len()],
        };
        // The exact stem id of each word, for phrases; partial matches are counted at once. A word
        // is analysed once per text: `seen` keeps its exact id or its range in `partial`.
        let mut sequence: Vec<Option<usize>> = Vec::with_capacity(spans.len());
        let mut seen: HashMap<&str, Result<usize, (usize, usize)>> = HashMap::new();
        let mut partial: Vec<usize> = Vec::new();
        for (position, &(s, e)) in spans.iter().enumerate() {
            let word = &lower[s..e];
            let analysed = *seen.entry(word).or_insert_with(|| {
                if !(1..=3).any(|len| self.keys.contains(&key(word, len))) {
                    return Err((0, 0));
                }
                let stem = stemmer.stem(word);
                if let Some(&id) = self.by_stem.get(stem.as_ref()) {
                    return Ok(id);
                }
                let start = partial.len();
                for root in roots(&stem) {
                    for &id in self.by_root.get(root).map_or(&[][..], Vec::as_slice) {
                        if !partial[start..].contains(&id) {
                            partial.push(id);
                        }
                    }
                }
                Err((start, partial.len()))
            });
            match analysed {
                Ok(id) => sequence.push(Some(id)),
                Err((start, end)) => {
                    sequence.push(None);
                    for &id in &partial[start..end] {
                        m.tf[id] += PARTIAL_WEIGHT * lead(position);
                        push_distinct(&mut m.words[id], (word, true));
                    }
                }
            }
        }
        // Phrases, then the exact words that no phrase covers.
        let mut covered = vec![false; sequence.len()];
        for (at, first) in sequence.iter().enumerate() {
            let Some(first) = *first else { continue };
            for &pid in &self.phrases_by_first[first] {
                let ids = &self.phrases[pid];
                let end = at + ids.len();
                if end <= sequence.len()
                    && sequence[at..end]
                        .iter()
                        .zip(ids)
                        .all(|(w, id)| *w == Some(*id))
                {
                    m.phrase_tf[pid] += lead(at);
                    push_distinct(
                        &mut m.phrase_words[pid],
                        &lower[spans[at].0..spans[end - 1].1],
                    );
                    covered[at..end].iter_mut().for_each(|c| *c = true);
                }
            }
        }
        for (position, (id, covered)) in sequence.iter().zip(covered).enumerate() {
            if let (Some(id), false) = (*id, covered) {
                let (s, e) = spans[position];
                m.tf[id] += lead(position);
                push_distinct(&mut m.words[id], (&lower[s..e], false));
            }
        }
        m
    }

    fn score(&self, agent: &Agent, m: &Matches<'_>) -> f64 {
        let stems: f64 = agent
            .stems
            .iter()
            .map(|o| o.weight * damp(m.tf[o.id]))
            .sum();
        let phrases: f64 = agent
            .phrases
            .iter()
            .map(|o| o.weight * damp(m.phrase_tf[o.id]))
            .sum();
        stems + phrases
    }

    /// One reason per tag that contributed, the largest contribution first (then tag order).
    fn reasons(agent: &Agent, m: &Matches<'_>) -> Vec<String> {
        // Per tag: contribution and the quoted words with their marks.
        let mut per_tag: Vec<(f64, Vec<String>)> = vec![(0.0, Vec::new()); agent.tags.len()];
        let mark = |word: &str, related: bool, partly: bool| match (related, partly) {
            (false, false) => format!("\"{word}\""),
            (true, false) => format!("\"{word}\" (related)"),
            (false, true) => format!("\"{word}\" (partly)"),
            (true, true) => format!("\"{word}\" (related, partly)"),
        };
        for o in &agent.phrases {
            if m.phrase_tf[o.id] > 0.0 {
                let entry = &mut per_tag[o.tag];
                entry.0 += o.weight * damp(m.phrase_tf[o.id]);
                for word in &m.phrase_words[o.id] {
                    push_distinct(&mut entry.1, mark(word, o.related, false));
                }
            }
        }
        for o in &agent.stems {
            if m.tf[o.id] > 0.0 {
                let entry = &mut per_tag[o.tag];
                entry.0 += o.weight * damp(m.tf[o.id]);
                for &(word, partly) in &m.words[o.id] {
                    push_distinct(&mut entry.1, mark(word, o.related, partly));
                }
            }
        }
        let mut order: Vec<usize> = (0..per_tag.len()).filter(|&t| per_tag[t].0 > 0.0).collect();
        order.sort_by(|&a, &b| per_tag[b].0.total_cmp(&per_tag[a].0).then(a.cmp(&b)));
        order
            .into_iter()
            .map(|t| {
                let (contribution, quoted) = &per_tag[t];
                let mut shown = quoted
                    .iter()
                    .take(MAX_QUOTED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if quoted.len() > MAX_QUOTED {
                    shown.push_str(", …");
                }
                format!(
                    "capability `{}` matched {shown} (+{contribution:.2})",
                    agent.tags[t]
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn router() -> Router {
        Router::with_related(
            &[
                Candidate {
                    name: "tester".into(),
                    capabilities: vec!["role:tester".into(), "unit-test".into()],
                },
                Candidate {
                    name: "debugger".into(),
                    capabilities: vec!["debug".into(), "crash".into()],
                },
            ],
            &[("crash", &["segfault"])],
        )
    }

    #[test]
    fn inflections_and_phrases_match() {
        let r = router();
        let top = &r.recommend("Testing: the unit tests were tested", 1)[0];
        assert_eq!(top.agent, "tester");
        assert!(
            top.reasons[0].starts_with("capability `unit-test` matched \"unit tests\""),
            "{:?}",
            top.reasons
        );
        assert_eq!(
            r.recommend("it crashed while debugging", 1)[0].agent,
            "debugger"
        );
    }

    #[test]
    fn related_words_count_less_and_say_so() {
        let r = router();
        let related = &r.recommend("a segfault", 1)[0];
        let direct = &r.recommend("a crash", 1)[0];
        assert_eq!(related.agent, "debugger");
        assert!(related.score < direct.score);
        assert_eq!(
            related.reasons,
            [format!(
                "capability `crash` matched \"segfault\" (related) (+{:.2})",
                related.score
            )]
        );
        let plain = [Candidate {
            name: "debugger".into(),
            capabilities: vec!["crash".into()],
        }];
        assert!(
            Router::with_related(&plain, &[])
                .recommend("a segfault", 1)
                .is_empty()
        );
    }

    #[test]
    fn a_multi_word_key_needs_all_its_stems() {
        let retro = Candidate {
            name: "retro".into(),
            capabilities: vec!["action-item".into()],
        };
        let other = Candidate {
            name: "other".into(),
            capabilities: vec!["action".into()],
        };
        let r = Router::with_related(&[retro, other], &[("action-item", &["follow up"])]);
        let top = r.recommend("follow up with the owners", 5);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].agent, "retro");
        assert!(
            top[0].reasons[0].contains("\"follow up\" (related)"),
            "{top:?}"
        );
    }

    #[test]
    fn role_prefix_is_dropped_and_partial_matches_count_less() {
        let stemmer = Stemmer::create(Algorithm::English);
        assert_eq!(tag_stems(&stemmer, "role:ci-fixer"), ["ci", "fixer"]);
        assert_eq!(tag_stems(&stemmer, "Dead_Link"), ["dead", "link"]);
        assert_eq!(tag_stems(&stemmer, "role"), ["role"]);
        let r = router();
        // "debugger" stems to "debugg", which reduces to "debug": a partial match.
        let partial = &r.recommend("the debugger", 1)[0];
        let exact = &r.recommend("debug", 1)[0];
        assert!(partial.score < exact.score);
        assert!(
            partial.reasons[0].contains("\"debugger\" (partly)"),
            "{:?}",
            partial.reasons
        );
    }

    #[test]
    fn roots_drop_endings_but_not_arbitrary_letters() {
        assert_eq!(roots("tester"), ["tester", "test", "teste"]);
        assert_eq!(roots("debugg"), ["debugg", "debug"]);
        assert_eq!(roots("failur"), ["failur", "fail", "failu"]);
        assert_eq!(roots("plant"), ["plant"]);
        assert_eq!(roots("bug"), ["bug"]);
        assert_eq!(undoubled("añoo"), None);
        assert_eq!(undoubled("añnn"), Some("añn"));
    }

    #[test]
    fn a_word_has_the_key_of_its_stem() {
        let stemmer = Stemmer::create(Algorithm::English);
        for word in [
            "dying", "skies", "using", "trying", "testing", "eking", "a", "ci", "ñu",
        ] {
            let stem = stemmer.stem(word);
            let len = stem.chars().count().min(3);
            assert_eq!(key(word, len), key(&stem, 3), "{word} -> {stem}");
        }
        assert_eq!(key("ci", 3), ['c', 'i', '\0']);
    }

    #[test]
    fn no_candidates_or_zero_limit_give_nothing() {
        assert!(Router::new(&[]).recommend("write tests", 3).is_empty());
        assert!(router().recommend("write tests", 0).is_empty());
    }
}
