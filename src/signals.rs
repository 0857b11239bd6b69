//! Signal names as they travel on the wire ("INT", "TERM": no SIG prefix) and
//! their Linux numbers. A fixed table, not libc, so clients on any OS agree.

/// Linux signal numbers for x86 and ARM (the generic table).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The number of a signal given by name; accepts "TERM", "SIGTERM" and "term".
pub fn number(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|&(_, num)| num)
}

/// The wire name of a signal number ("TERM" for 15); unknown numbers become
/// "SIG<n>" so no information is lost.
pub fn name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|&&(_, num)| num == number)
        .map_or_else(|| format!("SIG{number}"), |&(n, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for &(n, num) in SIGNALS {
            assert_eq!(number(n), Some(num));
            assert_eq!(name(num), n);
        }
    }

    #[test]
    fn accepts_sig_prefix_and_lowercase() {
        assert_eq!(number("SIGINT"), Some(2));
        assert_eq!(number("kill"), Some(9));
        assert_eq!(number("NOPE"), None);
        assert_eq!(number(""), None);
        assert_eq!(name(64), "SIG64");
    }
}
