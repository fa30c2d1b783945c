//! The docs say what the code does: the README's environment table is the list sluice reads
//! (`sluice::config::ENVIRONMENT`), no more and no less.

use sluice::config::ENVIRONMENT;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_names_every_variable_sluice_reads() {
    let readme = readme();
    for var in ENVIRONMENT {
        assert!(readme.contains(&format!("`{}`", var.name)), "the README does not name {}", var.name);
    }
}

#[test]
fn the_readme_names_no_variable_sluice_does_not_read() {
    let readme = readme();
    let words = readme.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
    for word in words.filter(|w| ["SLUICE_", "BACKFILL_", "MIMALLOC_"].iter().any(|p| w.starts_with(p))) {
        let listed = ENVIRONMENT.iter().any(|v| match v.name.strip_suffix('*') {
            Some(prefix) => word.starts_with(prefix),
            None => v.name == word,
        });
        assert!(listed, "the README names {word}, which is not in sluice::config::ENVIRONMENT");
    }
}
