//! Records checked against lexicons: µs per record for app.bsky.feed.post, app.bsky.feed.like,
//! app.bsky.graph.follow and xyz.statusphere.status, with the validators built once
//! (`sluice::lexicon::Lexicons`), and the time to load the whole fixture lexicon directory.
//!
//! The records are the real ones of `../shared/fixtures/car/calabro.car` (610 posts, 2,312
//! likes, 663 follows) and, as the fixtures hold no statusphere record, 1,000 generated
//! statuses. Each row also gives the parts of a check: decoding (DAG-CBOR into jacquard's
//! `Data`, every string kept a string: `decode_plain`; jacquard's own reader, which guesses a
//! type for each string, beside it for comparison), jacquard's structural pass
//! (`validate_by_nsid_structural` over the defs the record reaches), and all checks on a
//! decoded value (that pass, then sluice's constraints and formats). For comparison, the last
//! two columns are jacquard's `validate_by_nsid` (structure, then its constraint pass over a
//! clone of its registry, made on every call), over one registry of every def the record
//! reaches and over a registry of the whole directory, as a validator built without pruning
//! would run.
//!
//! `cargo bench --bench lexicon` prints a Markdown table for BENCHMARKS.md.
//! `SLUICE_BENCH_SECONDS` (default 1) sets the time spent on each measurement;
//! `SLUICE_BENCH_COLLECTION` measures only that collection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jacquard_common::IntoStatic;
use jacquard_common::types::value::Data;
use jacquard_lexicon::lexicon::LexiconDoc;
use jacquard_lexicon::schema::SchemaRegistry;
use jacquard_lexicon::validation::SchemaValidator;
use sluice::lexicon::{Lexicons, Verdict, decode_plain};
use sluice::repo::{CarLimits, read_car};
use sluice_testkit::{fixture, read_fixture};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COLLECTIONS: [&str; 4] =
    ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "xyz.statusphere.status"];

fn budget() -> Duration {
    let secs: f64 = std::env::var("SLUICE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

/// µs per item of `f` over `items`, passes repeated until the budget is spent.
fn per_item<T>(items: &[T], mut f: impl FnMut(&T)) -> f64 {
    let (start, mut n) = (Instant::now(), 0usize);
    while start.elapsed() < budget() || n == 0 {
        for item in items {
            f(item);
        }
        n += items.len();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
}

/// jacquard's validator over every document of the directory (no pruning).
fn whole_directory_validator(dir: &Path) -> SchemaValidator {
    let mut files = Vec::new();
    json_files(dir, &mut files);
    let registry = SchemaRegistry::new();
    for file in files {
        let text = std::fs::read(&file).unwrap();
        let doc: LexiconDoc<'_> = serde_json::from_slice(&text).unwrap();
        let doc = doc.into_static();
        registry.insert(doc.id.as_ref().into(), doc);
    }
    SchemaValidator::from_registry(registry)
}

fn statuses() -> Vec<Vec<u8>> {
    let emoji = ["👍", "🦋", "🙃", "🐈", "💙", "🥳", "😤", "🧑‍💻", "🇫🇷", "x"];
    (0..1000)
        .map(|i| {
            let v = serde_json::json!({
                "$type": "xyz.statusphere.status",
                "status": emoji[i % emoji.len()],
                "createdAt": format!("2025-01-{:02}T{:02}:{:02}:00.000Z", i % 28 + 1, i % 24, i % 60),
            });
            sluice::handlers::value::json_to_cbor(&v).unwrap()
        })
        .collect()
}

fn main() {
    let dir = fixture("lexicons");
    let files = {
        let mut f = Vec::new();
        json_files(&dir, &mut f);
        f.len()
    };

    // Loading: the whole directory, for every record collection and for the four.
    let mut load_all = Vec::new();
    let mut load_four = Vec::new();
    let four: Vec<String> = COLLECTIONS.iter().map(|c| c.to_string()).collect();
    for _ in 0..20 {
        let t = Instant::now();
        let all = Lexicons::load(&dir, &[]).unwrap();
        load_all.push(t.elapsed());
        assert!(all.knows("app.bsky.feed.post"));
        let t = Instant::now();
        Lexicons::load(&dir, &four).unwrap();
        load_four.push(t.elapsed());
    }
    load_all.sort();
    load_four.sort();
    let all_collections = Lexicons::load(&dir, &[]).unwrap().collections().count();

    let lexicons = Lexicons::load(&dir, &four).unwrap();
    let whole = whole_directory_validator(&dir);

    let repo = read_car(&read_fixture("car/calabro.car"), &CarLimits::default()).unwrap();
    let entries: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
    let statuses = statuses();

    println!(
        "Lexicon checks ({files} lexicon files; validators built once; µs per record, mean over passes of {:?})\n",
        budget()
    );
    println!(
        "| collection | records | bytes/record | decode to `Data` | jacquard's `Data` reader | jacquard structural | \
         all checks on decoded `Data` | **check** (all of it) | jacquard full, one registry of the defs reached | jacquard full, whole-directory registry |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let only = std::env::var("SLUICE_BENCH_COLLECTION").ok();
    for collection in COLLECTIONS.into_iter().filter(|c| only.as_deref().is_none_or(|o| o == *c)) {
        let records: Vec<&[u8]> = match collection {
            "xyz.statusphere.status" => statuses.iter().map(|s| s.as_slice()).collect(),
            _ => entries.iter().filter(|e| e.collection == collection).map(|e| e.bytes.as_ref()).collect(),
        };
        for r in &records {
            assert_eq!(lexicons.check(collection, r), Verdict::Valid, "{collection}");
        }
        let bytes = records.iter().map(|r| r.len()).sum::<usize>() / records.len();
        let decode = per_item(&records, |r| {
            std::hint::black_box(decode_plain(r).unwrap());
        });
        let jacquard_decode = per_item(&records, |r| {
            let d: Data = serde_ipld_dagcbor::from_slice(r).unwrap();
            std::hint::black_box(d);
        });
        let decoded: Vec<Data> = records.iter().map(|r| decode_plain(r).unwrap()).collect();
        let structure = lexicons.jacquard_validator(collection).unwrap();
        let structural = per_item(&decoded, |d| {
            std::hint::black_box(structure.validate_by_nsid_structural(collection, d));
        });
        let one_registry = per_item(&decoded, |d| {
            std::hint::black_box(structure.validate_by_nsid(collection, d));
        });
        let on_decoded = per_item(&decoded, |d| {
            std::hint::black_box(lexicons.check_value(collection, d));
        });
        let check = per_item(&records, |r| {
            std::hint::black_box(lexicons.check(collection, r));
        });
        let unpruned = per_item(&records, |r| {
            let d: Data = serde_ipld_dagcbor::from_slice(r).unwrap();
            std::hint::black_box(whole.validate_by_nsid(collection, &d));
        });
        println!(
            "| {collection} | {} | {bytes} | {decode:.2} | {jacquard_decode:.2} | {structural:.2} | {on_decoded:.2} | {check:.2} | {one_registry:.2} | {unpruned:.0} |",
            records.len()
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\nLoading the directory ({files} files): every record collection ({all_collections}): median {:.1} ms (min {:.1}); \
         the four above: median {:.1} ms (min {:.1}).",
        ms(load_all[load_all.len() / 2]),
        ms(load_all[0]),
        ms(load_four[load_four.len() / 2]),
        ms(load_four[0]),
    );
}
