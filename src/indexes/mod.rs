//! Indexes declared in the filter file (`[indexes.NAME]`): their definitions ([`spec`]), what a
//! record puts in one ([`extract`], reading only the fields its paths go through: [`pruned`])
//! and the byte encodings that keep entries in order ([`encode`]).
//!
//! The store keeps the entries (`store/indexes.rs`), written in the batch of the change that
//! writes the record; `pipeline::index_builds` puts the filter's definitions in force in the
//! store and builds a new index from the stored records in the background.
//!
//! Architecture invariant: this module knows no storage and no network; extraction is a pure
//! function of a definition and a record.

pub mod encode;
pub mod extract;
pub mod pruned;
pub mod spec;

pub use extract::{RecordEntries, Skip, entries, fuzz_entries};
pub use spec::{FieldPath, IndexSpec, PerRepo, Sort, SortType};
