//! devnet: real, signed AT Protocol repos built with jacquard-repo, for tests, benchmarks and
//! demos. (The fake PLC, PDS and relay servers on 127.0.0.1 build on this.)

mod repos;

pub use repos::{Account, RepoContents, export_car, export_car_blocking, rev_at};
