//! Sizes, durations and rates as operators write them: `4MB`, `576KiB`, `8m`, `9600bit`.
//! Sizes are decimal unless the unit says `iB` (link budgets are quoted in decimal units).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("{0:?} is not a size: write a number and a unit, like 4MB, 576KB, 2MiB or 1200B")]
    Size(String),
    #[error("{0:?} is not a duration: write a number and a unit, like 90s, 8m, 1h30m or 500ms")]
    Duration(String),
    #[error(
        "{0:?} is not a rate: write a number and a unit, like 9600bit, 9.6kbit, 2Mbit or 1200B (bytes per second)"
    )]
    Rate(String),
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n, s[end..].trim()))
}

/// `4MB` → 4,000,000; `2MiB` → 2,097,152; a bare number is bytes.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: f64 = match unit {
        "" | "B" | "b" => 1.0,
        "KB" | "kB" | "kb" | "K" | "k" => 1e3,
        "MB" | "mb" | "M" => 1e6,
        "GB" | "gb" | "G" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    Ok((n * mult).round() as u64)
}

/// `90s`, `8m`, `1h30m`, `500ms`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let (n, after) = split_number(rest).ok_or_else(err)?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let secs = match &after[..unit_len] {
            "" | "s" | "sec" => 1.0,
            "ms" => 1e-3,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * secs;
        rest = &after[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// A link rate in bytes per second: `9600bit` → 1200; `2Mbit` → 250,000; `1200B` → 1200.
pub fn parse_rate(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError::Rate(s.to_string());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let unit = unit.trim_end_matches("/s").trim_end_matches("ps");
    let bytes_per_s = match unit {
        "bit" | "b" => n / 8.0,
        "kbit" | "kb" | "Kbit" => n * 1e3 / 8.0,
        "Mbit" | "Mb" | "mbit" => n * 1e6 / 8.0,
        "Gbit" | "Gb" => n * 1e9 / 8.0,
        "B" => n,
        "KB" | "kB" => n * 1e3,
        "MB" => n * 1e6,
        _ => return Err(err()),
    };
    if bytes_per_s <= 0.0 {
        return Err(err());
    }
    Ok(bytes_per_s)
}

/// 1234567 → "1.2 MB" (decimal units).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 1200 bytes/s → "9.6 kbit/s".
pub fn fmt_rate(bytes_per_s: f64) -> String {
    let bits = bytes_per_s * 8.0;
    if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else if bits >= 1e3 {
        format!("{:.1} kbit/s", bits / 1e3)
    } else {
        format!("{bits:.0} bit/s")
    }
}

/// 754 s → "12m34s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4MB"), Ok(4_000_000));
        assert_eq!(parse_bytes("576KB"), Ok(576_000));
        assert_eq!(parse_bytes("2MiB"), Ok(2 << 20));
        assert_eq!(parse_bytes("1200"), Ok(1200));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("-1MB").is_err());
        assert!(parse_bytes("").is_err());
        assert_eq!(fmt_bytes(999), "999 B");
        assert_eq!(fmt_bytes(1_234_567), "1.2 MB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8m"), Ok(Duration::from_secs(480)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("8 fortnights").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(fmt_duration(Duration::from_secs(754)), "12m34s");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("9600bit"), Ok(1200.0));
        assert_eq!(parse_rate("9.6kbit"), Ok(1200.0));
        assert_eq!(parse_rate("2Mbit/s"), Ok(250_000.0));
        assert_eq!(parse_rate("1200B"), Ok(1200.0));
        assert!(parse_rate("9600").is_err(), "a bare number is ambiguous");
        assert!(parse_rate("0bit").is_err());
        assert_eq!(fmt_rate(1200.0), "9.6 kbit/s");
    }
}
