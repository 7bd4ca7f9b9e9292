//! Dates: Unix seconds to a UTC calendar date and back (proleptic Gregorian).

use super::SECONDS_PER_DAY;

/// A UTC date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DateTime {
    pub(super) century: u8,
    pub(super) year_in_century: u8,
    pub(super) month: u8,
    pub(super) day: u8,
    /// 0 = Sunday.
    pub(super) weekday: u8,
    pub(super) hour: u8,
    pub(super) minute: u8,
    pub(super) second: u8,
}

impl DateTime {
    pub(super) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECONDS_PER_DAY);
        let tod = secs.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let year = year.clamp(0, 9999);
        let small = |v: i64| u8::try_from(v).unwrap_or(0);
        Self {
            century: small(year / 100),
            year_in_century: small(year % 100),
            month: small(month),
            day: small(day),
            // 1970-01-01 was a Thursday.
            weekday: small((days + 4).rem_euclid(7)),
            hour: small(tod / 3600),
            minute: small(tod / 60 % 60),
            second: small(tod % 60),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
