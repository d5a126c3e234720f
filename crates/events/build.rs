//! Embeds every schema of the catalog folder `events/` into the crate, so that the binary
//! validates events from any working directory without reading files at run time.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = manifest.join("../../events");
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut entries: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the schema catalog {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.expect("readable catalog entry").path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".json")?
                .to_owned();
            Some((name, path.canonicalize().expect("canonical schema path")))
        })
        .collect();
    entries.sort();

    let mut out = String::from(
        "/// `(event type, JSON Schema text)` for every file in `events/`.\npub(crate) const BUILTIN_SCHEMAS: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let target = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("builtin_schemas.rs");
    fs::write(target, out).expect("write builtin_schemas.rs");
}
