//! Writing an edited filter back to its file the way a person left it: only the fields that
//! changed are rewritten; comments, key order, blank lines and the `[handlers]` table stay.

use toml_edit::{Array, DocumentMut, Item, value};

use super::Filter;

/// `text`, a filter file that reads as some filter, with the top-level fields where `edited`
/// differs from it written over and nothing else touched. `None` when that cannot be done
/// faithfully: `text` is not a valid filter (a refused save), the handlers changed, or the
/// result would not read back as exactly `edited`; then write [`Filter::to_toml`] instead.
pub fn rewrite_keeping_layout(text: &str, origin: &str, edited: &Filter) -> Option<String> {
    let before = Filter::from_toml(text, origin).ok()?;
    if before.handlers != edited.handlers {
        return None;
    }
    let mut doc: DocumentMut = text.parse().ok()?;
    let mut set = |key: &str, item: Item| match doc.get_mut(key) {
        // A value assigned in place keeps its key where it was, with the comment above it.
        Some(slot) if slot.is_value() => *slot = item,
        Some(_) => {}
        None => {
            doc.insert(key, item);
        }
    };
    if before.mode != edited.mode {
        set("mode", value(edited.mode.as_str()));
    }
    if before.signals != edited.signals {
        set("signals", list(&edited.signals));
    }
    if before.collections != edited.collections {
        set("collections", list(&edited.collections));
    }
    if before.exclude_collections != edited.exclude_collections {
        set("exclude_collections", list(&edited.exclude_collections));
    }
    if before.dids != edited.dids {
        set("dids", list(&edited.dids));
    }
    if before.exclude_dids != edited.exclude_dids {
        set("exclude_dids", list(&edited.exclude_dids));
    }
    let out = doc.to_string();
    (Filter::from_toml(&out, origin).ok()? == *edited).then_some(out)
}

/// A TOML array of strings.
fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> Item {
    value(items.into_iter().collect::<Array>())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::filter::arbitrary::filters;

    const FILE: &str = "# Our appview's filter.\n\
                        mode = \"signal\"   # only repos with a status\n\n\
                        # what makes a repo ours\n\
                        signals = [\"xyz.statusphere.status\"]\n\
                        collections = [\"xyz.statusphere.*\"]\n\n\
                        [handlers.post]\n\
                        enabled = false\n";

    fn parse(text: &str) -> Filter {
        Filter::from_toml(text, "f.toml").unwrap()
    }

    #[test]
    fn an_edit_rewrites_only_what_changed_and_keeps_comments_and_handlers() {
        let mut edited = parse(FILE);
        edited.collections.push("app.bsky.actor.profile".into());
        edited.dids.insert("did:plc:abc".into());
        let out = rewrite_keeping_layout(FILE, "f.toml", &edited).unwrap();
        assert_eq!(parse(&out), edited);
        for kept in [
            "# Our appview's filter.\n",
            "mode = \"signal\"   # only repos with a status\n",
            "# what makes a repo ours\nsignals = [\"xyz.statusphere.status\"]\n",
            "[handlers.post]\nenabled = false\n",
        ] {
            assert!(out.contains(kept), "{kept:?} kept in:\n{out}");
        }
        assert!(out.contains("collections = [\"xyz.statusphere.*\", \"app.bsky.actor.profile\"]\n"), "{out}");
        // A key the file did not have goes with the other top-level keys, before the tables.
        assert!(out.find("dids = [\"did:plc:abc\"]").unwrap() < out.find("[handlers.post]").unwrap(), "{out}");
    }

    #[test]
    fn nothing_faithful_to_keep_gives_none() {
        let edited = parse(FILE);
        assert_eq!(rewrite_keeping_layout("mode = \"fulll\"\n", "f.toml", &edited), None, "a refused save is not kept");
        let mut other_handlers = edited.clone();
        other_handlers.handlers.clear();
        assert_eq!(rewrite_keeping_layout(FILE, "f.toml", &other_handlers), None);
        assert_eq!(rewrite_keeping_layout(FILE, "f.toml", &edited).as_deref(), Some(FILE), "no change, no rewrite");
    }

    proptest! {
        /// Any edit of any filter file reads back as the edited filter, and the file's
        /// comments survive it.
        #[test]
        fn edits_read_back_exactly_and_keep_comments(before in filters(), edited in filters()) {
            let text = format!("# kept: a note\n{}# kept: the end\n", before.to_toml());
            let out = rewrite_keeping_layout(&text, "f.toml", &edited).expect("a valid file can be edited");
            prop_assert_eq!(parse(&out), edited);
            prop_assert!(out.starts_with("# kept: a note\n") && out.contains("# kept: the end"), "{}", out);
        }
    }
}
