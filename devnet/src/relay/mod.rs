//! The fake relay (`server`), and the repo listings (`listing`) it serves over every PDS host
//! and each PDS host serves over its own accounts.

pub(crate) mod listing;
pub(crate) mod server;
