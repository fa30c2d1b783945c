//! The docs say what the code does: the README's environment table is the list sluice reads
//! (`sluice::config::ENVIRONMENT`), no more and no less; the indexes it shows are the ones
//! `filters/indexes.toml` ships, and they load.

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

#[test]
fn the_readme_shows_the_shipped_indexes_and_they_load() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/filters/indexes.toml")).unwrap();
    let tables = &shipped[shipped.find("[indexes.").unwrap()..];
    assert!(readme().contains(tables), "the README's index tables differ from filters/indexes.toml");
    let everything = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/filters/everything.toml")).unwrap();
    let filter = sluice::filter::Filter::from_toml(&format!("{everything}\n{shipped}"), "everything+indexes").unwrap();
    let mut names: Vec<_> = filter.indexes.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["latest_status", "likes_by_subject", "statuses_by_status"]);
}

#[test]
fn every_picture_the_readme_shows_is_in_the_tree() {
    let readme = readme();
    let pictures: Vec<&str> =
        readme.split("](").skip(1).filter_map(|rest| rest.split(')').next()).filter(|p| p.ends_with(".png")).collect();
    assert!(pictures.contains(&"docs/status-page.png"), "the README shows the status page: {pictures:?}");
    for picture in pictures {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + picture)
            .unwrap_or_else(|e| panic!("the README shows {picture}, which cannot be read: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{picture} is not a PNG");
    }
}
