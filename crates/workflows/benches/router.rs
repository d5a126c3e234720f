//! Times `Router::recommend` over the labelled tasks of `tests/router/tasks.json`: mean and p99
//! microseconds per recommendation. Plain `Instant`, no harness: `cargo bench -p switchyard-workflows
//! --bench router`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard_workflows::router::{Candidate, Router};

#[derive(serde::Deserialize)]
struct Labelled {
    agents: Vec<Candidate>,
    tasks: Vec<Task>,
}

#[derive(serde::Deserialize)]
struct Task {
    text: String,
}

const ROUNDS: usize = 200;
const LIMIT: usize = 3;
/// The length in words of the long task.
const LONG_WORDS: usize = 300;

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/router/tasks.json");
    let set: Labelled =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read tasks.json"))
            .expect("parse tasks.json");

    let started = Instant::now();
    let router = Router::new(&set.agents);
    let build = started.elapsed();

    let texts: Vec<&str> = set.tasks.iter().map(|t| t.text.as_str()).collect();
    // A long task too: labelled texts joined until it has a few hundred words.
    let mut long = String::new();
    for text in texts.iter().cycle().take(texts.len() * 4) {
        if long.split_whitespace().count() >= LONG_WORDS {
            break;
        }
        long.push_str(text);
        long.push(' ');
    }
    let long_words = long.split_whitespace().count();

    // Warm up.
    for text in &texts {
        black_box(router.recommend(black_box(text), LIMIT));
    }

    let mut samples: Vec<Duration> = Vec::with_capacity(ROUNDS * texts.len());
    let mut returned = 0usize;
    for _ in 0..ROUNDS {
        for text in &texts {
            let t = Instant::now();
            let recommendations = black_box(router.recommend(black_box(text), LIMIT));
            samples.push(t.elapsed());
            returned += recommendations.len();
        }
    }
    let mut long_samples: Vec<Duration> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        black_box(router.recommend(black_box(&long), LIMIT));
        long_samples.push(t.elapsed());
    }

    let micros = |d: &Duration| d.as_secs_f64() * 1e6;
    let summary = |samples: &mut Vec<Duration>| {
        samples.sort();
        let mean = samples.iter().map(micros).sum::<f64>() / samples.len() as f64;
        let p99 = micros(&samples[(samples.len() * 99).div_ceil(100).saturating_sub(1)]);
        (mean, p99)
    };
    let (mean, p99) = summary(&mut samples);
    let (long_mean, long_p99) = summary(&mut long_samples);

    println!(
        "router: {} agents, {} labelled tasks, {ROUNDS} rounds, limit {LIMIT}",
        set.agents.len(),
        texts.len()
    );
    println!("router: Router::new {:.1} µs", micros(&build));
    println!(
        "router: recommendations timed {}, agents recommended {returned}",
        samples.len()
    );
    println!("router: labelled task: mean {mean:.2} µs, p99 {p99:.2} µs per recommendation");
    println!(
        "router: {long_words}-word task: mean {long_mean:.2} µs, p99 {long_p99:.2} µs per recommendation"
    );
}
