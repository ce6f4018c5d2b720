//! UTC dates without a time-zone database: for chat templates (`strftime_now`) and for the
//! creation date written into vector files.

/// Seconds since the epoch, UTC.
pub fn now_utc() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The time to stamp on a file: `SOURCE_DATE_EPOCH` when set (the reproducible-builds
/// convention, so that a rerun writes the same bytes), else now.
pub fn stamp_utc() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(now_utc)
}

/// An ISO 8601 UTC timestamp, e.g. `2026-11-25T22:04:52Z`.
pub fn iso8601(secs: i64) -> String {
    strftime("%Y-%m-%dT%H:%M:%SZ", secs).unwrap_or_default()
}

/// A subset of C's `strftime` (`%d %m %y %Y %b %B %a %A %H %M %S %j %%`), UTC; an error names
/// an unsupported conversion.
pub fn strftime(fmt: &str, secs: i64) -> Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let jan1 = {
        let y0 = y - 1;
        let era = y0.div_euclid(400);
        let yoe = y0 - era * 400;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + 306;
        era * 146_097 + doe - 719_468
    };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month = MONTHS[(m - 1) as usize];
        let weekday = DAYS[days.rem_euclid(7) as usize];
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('Y') => out.push_str(&y.to_string()),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{:03}", days - jan1 + 1)),
            Some('%') => out.push('%'),
            other => return Err(format!("%{} is not supported", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_strftime() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %j %H:%M:%S %y%%", t).unwrap(),
            "Thursday February 060 13:05:09 24%"
        );
        assert!(strftime("%Q", t).is_err());
        assert_eq!(iso8601(t), "2024-02-29T13:05:09Z");
    }
}
