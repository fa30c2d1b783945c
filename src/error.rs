//! Errors shown with their causes, on one line.
//!
//! Inside sluice errors are typed (`thiserror`): one enum where a module's callers act on the
//! kind (retry, gone, fatal), each keeping the error it wraps as its `source()` and not
//! repeating it in its own message. Where an error is shown (a log line, the reason stored in
//! a repo state, `/health`, a refused frame, a client's error message), it is shown with its
//! causes through [`chain`]: `backfill stopped: storage full: No space left on device ...`.
//! The CLI does the same with anyhow's `{:#}`, so both read alike.

use std::error::Error;
use std::fmt;

/// `e` and its sources, joined by `: ` when displayed (nothing is formatted until then).
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// An error displayed with its sources (see [`chain`]). Some libraries' errors say their
/// source's message in their own as well (async-nats, tungstenite): a source whose message
/// ends the one before it is not said twice.
#[derive(Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(mut source) = self.0.source() else { return write!(f, "{}", self.0) };
        // Errors are cold: each message is formatted to be compared with the next.
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        loop {
            let next = source.to_string();
            if !said.ends_with(&next) {
                write!(f, ": {next}")?;
            }
            said = next;
            match source.source() {
                Some(s) => source = s,
                None => return Ok(()),
            }
        }
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    /// Says its source's message too, as some libraries' errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("io error: {0}")]
    struct Verbose(#[source] std::io::Error);

    #[test]
    fn an_error_reads_with_its_sources() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::chain(&e).to_string(), "outer: inner");
        assert_eq!(super::chain(&std::io::Error::other("alone")).to_string(), "alone");
    }

    #[test]
    fn a_source_its_error_already_says_is_not_said_twice() {
        #[derive(Debug, thiserror::Error)]
        #[error("connecting")]
        struct Connecting(#[source] Verbose);
        let e = Connecting(Verbose(std::io::Error::other("refused")));
        assert_eq!(super::chain(&e).to_string(), "connecting: io error: refused");
    }
}
