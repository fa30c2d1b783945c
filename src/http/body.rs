//! Bounded reads of what other hosts send: bodies read up to a cap (memory never holds more),
//! and foreign text cut to one short log-safe line before it goes into logs, stored state or
//! metrics labels.

use bytes::{Bytes, BytesMut};

/// The most of an error answer's body read to name the error.
pub const ERROR_BODY_CAP: usize = 4 * 1024;

/// The most bytes of foreign text [`truncate_foreign`] keeps.
pub const FOREIGN_TEXT_MAX: usize = 1024;

/// Why a capped body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than its cap: `Content-Length` said so (`declared`), or reading
    /// stopped as soon as it passed the cap (`seen` bytes had arrived).
    #[error("{what} over its {cap}-byte cap ({})", over_cap_detail(*.declared, *.seen))]
    TooLarge { what: &'static str, cap: usize, declared: bool, seen: u64 },
    /// The body did not arrive (connection, timeout).
    #[error("reading the body")]
    Read(#[source] reqwest::Error),
}

fn over_cap_detail(declared: bool, seen: u64) -> String {
    match declared {
        true => format!("Content-Length {seen}, not read"),
        false => format!("stopped reading after {seen} bytes"),
    }
}

/// The body of `resp`, at most `cap` bytes: refused at once when `Content-Length` says more,
/// else read until it ends or passes the cap (memory holds at most `cap` and one chunk).
/// `what` names the body in the error (`"DID document"`).
pub async fn read_capped(mut resp: reqwest::Response, cap: usize, what: &'static str) -> Result<Bytes, BodyError> {
    let declared = resp.content_length();
    if let Some(len) = declared.filter(|len| *len > cap as u64) {
        return Err(BodyError::TooLarge { what, cap, declared: true, seen: len });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(cap as u64) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > cap {
            let seen = (body.len() + chunk.len()) as u64;
            return Err(BodyError::TooLarge { what, cap, declared: false, seen });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// What an error answer says, for a log line or a stored error: at most [`ERROR_BODY_CAP`]
/// bytes read (never an error: what did not arrive is left out), then [`truncate_foreign`].
pub async fn error_excerpt(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_CAP {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_CAP - body.len())]),
            _ => break,
        }
    }
    truncate_foreign(&String::from_utf8_lossy(&body))
}

/// `text` from another host made safe for one log line: at most [`FOREIGN_TEXT_MAX`] bytes
/// of it kept (cut at a character boundary), control characters, line and paragraph
/// separators and bidirectional overrides each replaced by a space, and, when cut, a marker
/// saying how many bytes were left out.
pub fn truncate_foreign(text: &str) -> String {
    let kept = match text.len() <= FOREIGN_TEXT_MAX {
        true => text.len(),
        false => (0..=FOREIGN_TEXT_MAX).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0),
    };
    let mut out: String = text[..kept].chars().map(|c| if unsafe_in_a_line(c) { ' ' } else { c }).collect();
    if kept < text.len() {
        out.push_str(&format!("… [{} more bytes cut]", text.len() - kept));
    }
    out
}

/// Characters that would break a log line or hide what it says.
fn unsafe_in_a_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_clean_text_is_kept_as_is() {
        assert_eq!(truncate_foreign("bad request: no such repo"), "bad request: no such repo");
        assert_eq!(truncate_foreign(""), "");
    }

    #[test]
    fn control_characters_become_spaces() {
        assert_eq!(truncate_foreign("a\nb\r\nc\td\u{1b}[31m\u{2028}\u{202e}e"), "a b  c d [31m  e");
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        let text = "é".repeat(1_000_000);
        let cut = truncate_foreign(&text);
        assert!(cut.starts_with("éé") && cut.ends_with(&format!("[{} more bytes cut]", 2_000_000 - 1024)), "{cut}");
        assert!(cut.len() < FOREIGN_TEXT_MAX + 40);
    }

    proptest! {
        /// Whatever arrives, the result is one bounded line that starts with what was kept of
        /// the text, and says how much was cut.
        #[test]
        fn foreign_text_becomes_one_bounded_line(text in ".{0,1500}") {
            let out = truncate_foreign(&text);
            prop_assert!(out.len() <= FOREIGN_TEXT_MAX + 40, "{} bytes", out.len());
            prop_assert!(!out.chars().any(unsafe_in_a_line));
            if text.len() <= FOREIGN_TEXT_MAX {
                let expected: String = text.chars().map(|c| if unsafe_in_a_line(c) { ' ' } else { c }).collect();
                prop_assert_eq!(out, expected);
            } else {
                let marker = out.rfind("… [").unwrap();
                let kept = &out[..marker];
                let cut: usize = out[marker..].trim_start_matches("… [").split(' ').next().unwrap().parse().unwrap();
                prop_assert!(text.len() - cut <= FOREIGN_TEXT_MAX);
                prop_assert_eq!(kept.chars().count(), text[..text.len() - cut].chars().count());
            }
        }
    }
}
