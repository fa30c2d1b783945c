//! The methods `Store` had before its parts, each now a call on the part that owns it: kept
//! for one step so that callers move to the accessors in commits of their own. Removed once
//! none is left.

#![allow(missing_docs)]

use std::collections::HashSet;

use super::{RecordEvent, RecordMap, RepoState, Result, StatePage, Store, StoredEvent, Trimmed, values::RecordRef};

#[doc(hidden)]
impl Store {
    pub fn handler_space(&self, name: &'static str) -> Result<()> {
        self.handlers.open(name)
    }
    pub fn repo_state(&self, did: &str) -> Result<Option<RepoState>> {
        self.repos.state(did)
    }
    pub fn repo_states(&self) -> Result<Vec<(String, RepoState)>> {
        self.repos.all()
    }
    pub fn repo_state_page(
        &self,
        after: Option<&str>,
        limit: usize,
        max_scan: usize,
        keep: impl FnMut(&RepoState) -> bool,
    ) -> Result<StatePage> {
        self.repos.page(after, limit, max_scan, keep)
    }
    pub fn repo_records(&self, did: &str) -> Result<RecordMap> {
        self.records.of_repo(did)
    }
    pub fn record_cid(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<Vec<u8>>> {
        self.records.cid(did, collection, rkey)
    }
    pub fn record(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<RecordRef>> {
        self.records.get(did, collection, rkey)
    }
    pub fn collection_page(
        &self,
        did: &str,
        collection: &str,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<Vec<(String, RecordRef)>> {
        self.records.page(did, collection, after, limit, ascending)
    }
    pub fn repo_collections(&self, did: &str) -> Result<Vec<String>> {
        self.records.collections(did)
    }
    pub fn repo_record_count(&self, did: &str) -> Result<u64> {
        self.records.count(did)
    }
    pub fn handler_keys(
        &self,
        name: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        self.handlers.keys(name, prefix, after, limit)
    }
    pub fn event_body<'e>(&self, event: &'e RecordEvent) -> Result<Option<std::borrow::Cow<'e, [u8]>>> {
        self.log.body(event)
    }
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>> {
        self.log.from(from, limit)
    }
    pub fn events_with_time_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, u64, StoredEvent)>> {
        self.log.from_with_times(from, limit)
    }
    pub fn first_event_after_time(&self, time_us: u64) -> Result<Option<u64>> {
        self.log.first_after_time(time_us)
    }
    pub fn oldest_event_id(&self) -> Result<Option<u64>> {
        self.log.oldest_id()
    }
    pub fn hold_events_from(&self, id: u64) {
        self.log.hold_from(id)
    }
    pub fn trim_events_older_than(&self, age: std::time::Duration) -> Result<Trimmed> {
        self.log.trim_older_than(age)
    }
    pub fn enqueue_new(&self, dids: &[String], cursor: Option<(&str, &str)>) -> Result<usize> {
        self.queue().enqueue_new(dids, cursor)
    }
    pub fn add_unknown_repos(
        &self,
        candidates: impl IntoIterator<Item = (String, RepoState)>,
        cursor: Option<(&str, &str)>,
    ) -> Result<Vec<(String, RepoState)>> {
        self.queue().add_unknown(candidates, cursor)
    }
    pub fn take_due(&self, now_ms: u64, limit: usize, skip: &HashSet<String>) -> Result<Vec<(String, RepoState)>> {
        self.queue().take_due(now_ms, limit, skip)
    }
    pub fn next_due_ms(&self, skip: &HashSet<String>) -> Result<Option<u64>> {
        self.queue().next_due_ms(skip)
    }
    pub fn rewind_queue(&self) {
        self.queue().rewind()
    }
    pub fn reset_crawl(&self) -> Result<()> {
        self.cursors.reset_crawl()
    }
    pub fn hold(&self, did: &str, rev: &str, frame: &[u8]) -> Result<()> {
        self.held.hold(did, rev, frame)
    }
    pub fn held_commits(&self, did: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.held.commits(did)
    }
    pub fn release_held(&self, did: &str, revs: &[String]) -> Result<()> {
        self.held.release(did, revs)
    }
    pub fn held_dids(&self) -> Result<Vec<String>> {
        self.held.dids()
    }
    pub fn save_cursor(&self, service: &str, value: &str) -> Result<()> {
        self.cursors.save(service, value)
    }
    pub fn cursor(&self, service: &str) -> Result<Option<String>> {
        self.cursors.get(service)
    }
    pub fn did_for_handle(&self, handle: &str) -> Result<Option<String>> {
        self.handles().did_for(handle)
    }
    pub fn handle_checks_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.handles().checks_after(after, limit)
    }
    pub fn request_handle_check(&self, did: &str) -> Result<()> {
        self.handles().request_check(did)
    }
    pub fn set_handle_verdict(&self, did: &str, handle: Option<String>, ok: bool) -> Result<()> {
        self.handles().set_verdict(did, handle, ok)
    }
    pub fn queue_unchecked_handles(&self, after: Option<&str>, limit: usize) -> Result<Option<String>> {
        self.handles().queue_unchecked(after, limit)
    }
}
