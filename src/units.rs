//! Numbers for people: counts with thousands separators, durations and rates in words (and
//! the rate itself, [`per_sec`]). One
//! place for the way the progress lines, the status page and `sluice status` write them (the
//! page's script, `server/status/status.js`, writes them alike).

use std::time::Duration;

/// `n` over `time`, per second; nothing done is 0/s, and something done in no measurable time
/// counts as done in a millisecond.
pub fn per_sec(n: u64, time: Duration) -> f64 {
    match n {
        0 => 0.0,
        n => n as f64 / time.as_secs_f64().max(1e-3),
    }
}

/// `1234567` -> `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate per second: `0`, `0.4`, `12`, `1,234`.
pub fn rate(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() || r <= 0.0 => "0".into(),
        r if r < 10.0 => format!("{r:.1}"),
        r => count(r.round() as u64),
    }
}

/// `31 ms`, `4.2 s`, `42 s`, `3 min 05 s`, `2 h 03 min`, `3 d 04 h`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        _ if d.is_zero() => "0 s".into(),
        0 if d.as_millis() < 1000 => format!("{} ms", d.as_millis()),
        0..10 => format!("{:.1} s", d.as_secs_f64()),
        10..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        3600..86400 => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {:02} h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Bytes as `512 B`, `3.2 KiB`, `41.0 MiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rates_durations_and_bytes_read_as_people_write_them() {
        assert_eq!([count(0), count(999), count(1000), count(1_234_567)], ["0", "999", "1,000", "1,234,567"]);
        assert_eq!(
            [rate(0.0), rate(f64::NAN), rate(0.42), rate(12.4), rate(12_345.6)],
            ["0", "0", "0.4", "12", "12,346"]
        );
        let d = |s| duration(Duration::from_secs_f64(s));
        assert_eq!(d(0.0), "0 s");
        assert_eq!(
            [d(0.25), d(4.25), d(42.0), d(185.0), d(7380.0), d(273_600.0)],
            ["250 ms", "4.2 s", "42 s", "3 min 05 s", "2 h 03 min", "3 d 04 h"]
        );
        assert_eq!([bytes(512), bytes(3277), bytes(43_000_000)], ["512 B", "3.2 KiB", "41.0 MiB"]);
    }

    proptest::proptest! {
        /// A count reads back as the number it was, and groups of three follow each comma.
        #[test]
        fn a_count_reads_back(n in proptest::prelude::any::<u64>()) {
            let text = count(n);
            proptest::prop_assert_eq!(text.replace(',', "").parse::<u64>().unwrap(), n);
            proptest::prop_assert!(text.split(',').skip(1).all(|g| g.len() == 3));
        }
    }
}
