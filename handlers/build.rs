//! Declares every file in `src/handlers/` as a module, so a handler written in a new file
//! there registers itself (through `inventory`) with no edit anywhere else.

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/handlers");
    println!("cargo:rerun-if-changed=src/handlers");
    let mut modules: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("handlers/src/handlers exists")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let stem = path.file_stem()?.to_str()?.to_string();
            let is_ident = stem.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && stem.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            (path.extension()? == "rs" && is_ident).then(|| (stem, path.display().to_string()))
        })
        .collect();
    modules.sort();
    let code: String = modules.iter().map(|(name, path)| format!("#[path = {path:?}]\npub mod {name};\n")).collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("handler_modules.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
