//! getRepo against hostile hosts on loopback (testkit's `hostile`): deadlines cut a trickle,
//! a stall and a host that never answers while other hosts' repos arrive; a huge error body is
//! read only to its cap; a `Content-Length`, a block or a block count over the limits is
//! refused as soon as the stream shows it; the spool's cap holds downloads until room is free;
//! a host has at most its slots in flight, and a failing host is paused without holding up the
//! others. The fetcher is used directly: no binary, short test deadlines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::backfill::fetch::{Deadline, FetchError, FetchOptions, RepoFetcher, Spooled};
use sluice::backfill::hosts::HostPolicy;
use sluice::repo::{CarLimits, RepoError};
use sluice_testkit::hostile::{HostileHost, Misbehaviour, raw_car};

/// The longest any download here may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Beyond a cap, what socket buffers and a chunk in flight may hold when the client stops.
const SLACK: u64 = 16 << 20;

/// Short deadlines: a second's grace, then 1 MiB/s; 2 s idle.
fn fast() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        min_bytes_per_sec: 1 << 20,
        spool_cap_bytes: 1 << 30,
        spool_wait: Duration::from_secs(1),
        hosts: HostPolicy {
            max_concurrent: 4,
            failures_to_pause: 3,
            first_pause: Duration::from_secs(60),
            max_pause: Duration::from_secs(60),
        },
    }
}

fn fetcher(limits: CarLimits, options: FetchOptions) -> (Arc<RepoFetcher>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Arc::new(RepoFetcher::with_options(limits, dir.path().join("spool"), options)), dir)
}

async fn download(fetcher: &RepoFetcher, host: &HostileHost) -> Result<Spooled, FetchError> {
    tokio::time::timeout(LIMIT, fetcher.download(&host.url(), "did:plc:hostile")).await.expect("bounded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_is_cut_by_the_minimum_rate_while_another_host_finishes() {
    let trickle = HostileHost::start(Misbehaviour::Trickle { every: Duration::from_millis(50) }).await;
    let car = Arc::new(raw_car(&[1000; 3000]));
    let honest = HostileHost::start(Misbehaviour::Stream {
        body: car.clone(),
        piece: 64 << 10,
        every: Duration::from_millis(10),
    })
    .await;
    let (f, _dir) = fetcher(CarLimits::default(), fast());
    let start = Instant::now();
    let (cut, arrived) = tokio::join!(download(&f, &trickle), download(&f, &honest));
    assert_eq!(arrived.unwrap().len(), car.len() as u64, "the honest host's repo arrives whole");
    let e = cut.err().expect("the trickle is cut");
    assert!(
        matches!(&e, FetchError::Deadline { deadline: Deadline::Rate { .. }, received, .. } if *received > 0),
        "{e}"
    );
    assert!(!e.is_permanent(), "a deadline is transient");
    let text = e.to_string();
    assert!(text.contains("minimum rate") && text.contains("bytes received"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(4), "cut soon after the grace: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_and_a_host_that_never_answers_are_cut_by_the_idle_timeout() {
    let options = FetchOptions { idle_timeout: Duration::from_millis(500), grace: Duration::from_secs(60), ..fast() };
    let (f, _dir) = fetcher(CarLimits::default(), options);
    let stall = HostileHost::start(Misbehaviour::Stall).await;
    let e = download(&f, &stall).await.err().unwrap();
    assert!(matches!(e, FetchError::Deadline { deadline: Deadline::Idle(_), received: 0, .. }), "{e}");
    let hang = HostileHost::start(Misbehaviour::Hang).await;
    let e = download(&f, &hang).await.err().unwrap();
    assert!(matches!(e, FetchError::Deadline { deadline: Deadline::Answer(_), .. }), "{e}");
    assert!(e.to_string().contains("no answer within 0.5s"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_body_is_read_only_to_its_cap_and_cut_to_a_line() {
    let (f, _dir) = fetcher(CarLimits::default(), fast());
    for declared in [false, true] {
        let host = HostileHost::start(Misbehaviour::Huge { status: 500, len: 100 << 20, declared }).await;
        let e = download(&f, &host).await.err().unwrap();
        assert!(matches!(e, FetchError::Status { status: 500, .. }), "{e}");
        assert!(!e.is_permanent(), "a 5xx is transient");
        let text = e.to_string();
        assert!(text.contains("cap") && text.len() < 1200 && !text.contains('\n'), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(host.body_bytes() < SLACK, "declared {declared}: the host wrote {} bytes", host.body_bytes());
    }
    let long = format!(r#"{{"error":"InternalError","message":"{}"}}"#, "y".repeat(3000));
    let host = HostileHost::start(Misbehaviour::Status { status: 502, body: long }).await;
    let text = download(&f, &host).await.err().unwrap().to_string();
    assert!(text.contains("InternalError") && text.contains("more bytes cut") && text.len() < 1200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_over_the_car_limit_is_refused_before_the_body_is_read() {
    let limits = CarLimits { max_car_bytes: 1 << 20, ..Default::default() };
    let (f, _dir) = fetcher(limits, fast());
    let host = HostileHost::start(Misbehaviour::Huge { status: 200, len: 100 << 20, declared: true }).await;
    let e = download(&f, &host).await.err().unwrap();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("Content-Length 104857600 is over the 1048576-byte limit (max_car_mb)"), "{e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(host.body_bytes() < SLACK, "the host wrote {} bytes", host.body_bytes());
    // Undeclared: cut as soon as it passes the limit.
    let host = HostileHost::start(Misbehaviour::Huge { status: 200, len: 100 << 20, declared: false }).await;
    let e = download(&f, &host).await.err().unwrap();
    assert!(matches!(e, FetchError::Repo(RepoError::TooLarge(_)) | FetchError::Repo(RepoError::Car(_))), "{e}");
    assert!(host.body_bytes() < SLACK, "the host wrote {} bytes", host.body_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_over_the_limits_are_refused_while_downloading_and_read_when_allowed() {
    let car = Arc::new(raw_car(&[100, 4_608 << 10]));
    let host = HostileHost::start(Misbehaviour::Serve { body: car.clone(), delay: Duration::ZERO }).await;
    let wide = CarLimits { max_block_bytes: 5_120 << 10, ..Default::default() };
    let (f, _dir) = fetcher(wide, fast());
    let spooled = download(&f, &host).await.expect("max_block_kb = 5120 takes a 4.5 MiB block");
    // Every block read and checked; the root of this test CAR is no commit.
    assert!(matches!(spooled.read(&wide, u64::MAX), Err(RepoError::NotACommit(..))));

    let (f, _dir) = fetcher(CarLimits::default(), fast());
    let e = download(&f, &host).await.err().unwrap();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("is over the 2097152-byte limit (max_block_kb)"), "{e}");

    let many = Arc::new(raw_car(&[10; 50]));
    let host = HostileHost::start(Misbehaviour::Serve { body: many, delay: Duration::ZERO }).await;
    let (f, _dir) = fetcher(CarLimits { max_blocks: 10, ..Default::default() }, fast());
    let e = download(&f, &host).await.err().unwrap();
    assert!(e.to_string().contains("more than 10 blocks (max_blocks)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_cap_holds_downloads_until_room_is_free_and_refuses_one_alone_over_it() {
    let options = FetchOptions { spool_cap_bytes: 1 << 20, ..fast() };
    let dir = tempfile::tempdir().unwrap();
    let mut fetcher = RepoFetcher::with_options(CarLimits::default(), dir.path().join("spool"), options);
    fetcher.spool_in_memory = 4096;
    let f = Arc::new(fetcher);
    let car = Arc::new(raw_car(&[600 << 10]));
    let declared = HostileHost::start(Misbehaviour::Serve { body: car.clone(), delay: Duration::ZERO }).await;
    let chunked =
        HostileHost::start(Misbehaviour::Stream { body: car.clone(), piece: 64 << 10, every: Duration::ZERO }).await;
    let first = download(&f, &declared).await.unwrap();
    assert!(matches!(first, Spooled::File(_)));
    assert!(f.spool_held_bytes() >= car.len() as u64);
    let spawn = |host: &HostileHost| {
        let (f, url) = (f.clone(), host.url());
        tokio::spawn(async move { f.download(&url, "did:plc:waiting").await })
    };
    let (second, third) = (spawn(&declared), spawn(&chunked));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!second.is_finished() && !third.is_finished(), "no room in the spool: both wait");
    drop(first);
    // One gets the room, then, once its export is dropped, the other.
    let (mut second, mut third) = (second, third);
    let one = tokio::time::timeout(LIMIT, async {
        tokio::select! { r = &mut second => (r, third), r = &mut third => (r, second) }
    });
    let (done, other) = one.await.unwrap();
    assert_eq!(done.unwrap().unwrap().len(), car.len() as u64);
    let other = tokio::time::timeout(LIMIT, other).await.unwrap().unwrap().unwrap();
    assert_eq!(other.len(), car.len() as u64, "the other waited its turn");
    drop(other);
    assert_eq!(f.spool_held_bytes(), 0, "the room goes with the spooled exports");
    let big = Arc::new(raw_car(&[1_500 << 10]));
    let host = HostileHost::start(Misbehaviour::Serve { body: big, delay: Duration::ZERO }).await;
    let e = download(&f, &host).await.err().unwrap();
    assert!(matches!(e, FetchError::OverSpoolCap { .. }) && e.is_permanent(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_has_at_most_its_slots_in_flight() {
    let options = FetchOptions { hosts: HostPolicy { max_concurrent: 2, ..fast().hosts }, ..fast() };
    let (f, _dir) = fetcher(CarLimits::default(), options);
    let car = Arc::new(raw_car(&[100; 10]));
    let host = HostileHost::start(Misbehaviour::Serve { body: car, delay: Duration::from_millis(150) }).await;
    let downloads = (0..8).map(|_| download(&f, &host));
    for result in futures_util::future::join_all(downloads).await {
        result.unwrap();
    }
    assert_eq!(host.peak_in_flight(), 2, "two requests at a time to the host");
    assert_eq!(host.connections(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_host_is_paused_and_does_not_hold_up_the_others() {
    let policy = HostPolicy { max_concurrent: 2, failures_to_pause: 2, ..fast().hosts };
    let options = FetchOptions { idle_timeout: Duration::from_millis(400), hosts: policy, ..fast() };
    let (f, _dir) = fetcher(CarLimits::default(), options);
    let dead = HostileHost::start(Misbehaviour::Hang).await;
    let car = Arc::new(raw_car(&[100; 10]));
    let good = HostileHost::start(Misbehaviour::Serve { body: car, delay: Duration::ZERO }).await;
    let start = Instant::now();
    let to_dead = futures_util::future::join_all((0..8).map(|_| download(&f, &dead)));
    let to_good = async {
        let results = futures_util::future::join_all((0..8).map(|_| download(&f, &good))).await;
        (results, start.elapsed())
    };
    let (dead_results, (good_results, good_took)) = tokio::join!(to_dead, to_good);
    assert!(good_results.iter().all(Result::is_ok));
    assert!(good_took < Duration::from_millis(400), "the good host's repos did not wait: {good_took:?}");
    let paused = dead_results.iter().filter(|r| matches!(r, Err(FetchError::HostPaused(_)))).count();
    let cut = dead_results.iter().filter(|r| matches!(r, Err(FetchError::Deadline { .. }))).count();
    // Two failures pause the host. The two first requests time out together; when one of them
    // gives back its slot, a waiting request may take it before the other's failure is counted,
    // and is cut in turn: at most one more, never a wait.
    assert!((2..=3).contains(&cut) && cut + paused == 8, "cut {cut}, paused {paused}: the rest are refused at once");
    assert!(start.elapsed() < Duration::from_secs(2), "the dead host held its workers {:?}", start.elapsed());
    assert_eq!(dead.connections(), cut as u64, "refused requests never connect");
    assert_eq!((f.hosts.paused_hosts(), f.hosts.refused_requests()), (1, paused as u64));
    let e = download(&f, &dead).await.err().unwrap();
    assert!(matches!(e, FetchError::HostPaused(_)) && !e.is_permanent(), "{e}");
    assert!(download(&f, &good).await.is_ok(), "the other host goes on");
    // 5xx count as failures too.
    let failing = HostileHost::start(Misbehaviour::Status { status: 503, body: String::new() }).await;
    for _ in 0..2 {
        assert!(matches!(download(&f, &failing).await, Err(FetchError::Status { status: 503, .. })));
    }
    assert!(matches!(download(&f, &failing).await, Err(FetchError::HostPaused(_))));
    assert_eq!(failing.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_gives_back_its_host_slot_and_spool_room() {
    let options = FetchOptions { hosts: HostPolicy { max_concurrent: 1, ..fast().hosts }, ..fast() };
    let dir = tempfile::tempdir().unwrap();
    let mut fetcher = RepoFetcher::with_options(CarLimits::default(), dir.path().join("spool"), options);
    fetcher.spool_in_memory = 4096;
    let f = Arc::new(fetcher);
    // Half a CAR, then nothing: the download holds the host's one slot and room in the spool.
    let car = raw_car(&[1 << 20]);
    let half = Arc::new(car[..car.len() / 2].to_vec());
    let pause = Duration::from_secs(60);
    let host = HostileHost::start(Misbehaviour::Stream { body: half.clone(), piece: half.len(), every: pause }).await;
    let (f2, url) = (f.clone(), host.url());
    let task = tokio::spawn(async move { f2.download(&url, "did:plc:cancelled").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.spool_held_bytes() > 0, "the download holds room in the spool");
    task.abort();
    let _ = task.await;
    assert_eq!(f.spool_held_bytes(), 0, "cancelled, it gives its room back");
    assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 0, "and its file");
    assert_eq!(f.hosts.paused_hosts(), 0, "a cancelled request says nothing against its host");
    // The slot is free again: the next request to the host goes (and is cut by its deadline).
    let e = tokio::time::timeout(Duration::from_secs(5), f.download(&host.url(), "did:plc:next")).await.unwrap();
    assert!(matches!(e, Err(FetchError::Deadline { .. })), "{:?}", e.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_host_is_held_not_paused() {
    let (f, _dir) = fetcher(CarLimits::default(), fast());
    let mut f = Arc::into_inner(f).unwrap();
    f.max_rate_limited = 1;
    let host = HostileHost::start(Misbehaviour::Status { status: 429, body: String::new() }).await;
    let e = download(&f, &host).await.err().unwrap();
    assert!(matches!(e, FetchError::RateLimited(_)) && !e.is_permanent(), "{e}");
    assert_eq!((f.hosts.blocked_hosts(), f.hosts.paused_hosts()), (1, 0));
}
