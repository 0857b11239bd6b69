//! Telling an HTTP request from a legacy text command, Redis-style: a browser
//! can make any page send `GET /$(cmd) HTTP/1.1` or a POST body to a loopback
//! port, and the legacy protocol has no authentication, so text that starts
//! like a request line or carries a `Host:` header line must never run.

/// Request-line starts of every method a browser or HTTP client sends, and
/// the HTTP/2 preface. Methods are case-sensitive in HTTP, so only these.
const REQUEST_LINE_STARTS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"OPTIONS ",
    b"DELETE ",
    b"PATCH ",
    b"CONNECT ",
    b"PRI * HTTP",
];

/// What the first bytes of a text request say about HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProbe {
    /// An HTTP request: run nothing, close the connection.
    Http(&'static str),
    /// So far a strict prefix of a request line (`GE`, `POS`): wait for more
    /// bytes; if none come, the text is refused rather than run.
    Prefix,
    /// Not HTTP.
    NotHttp,
}

/// Classifies the bytes a text request has so far.
pub fn probe(bytes: &[u8]) -> HttpProbe {
    for start in REQUEST_LINE_STARTS {
        if bytes.starts_with(start) {
            return HttpProbe::Http("starts like an HTTP request line");
        }
    }
    if has_host_line(bytes) {
        return HttpProbe::Http("has an HTTP Host: header line");
    }
    if !bytes.is_empty()
        && REQUEST_LINE_STARTS
            .iter()
            .any(|start| start.len() > bytes.len() && start.starts_with(bytes))
    {
        return HttpProbe::Prefix;
    }
    HttpProbe::NotHttp
}

/// A line, the first or one after a `\n`, that starts with `host:` in any case.
fn has_host_line(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|line| {
        line.get(..5)
            .is_some_and(|word| word.eq_ignore_ascii_case(b"host:"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn browser_and_curl_requests_are_http() {
        for request in [
            &b"GET /$(touch$IFS/tmp/x) HTTP/1.1\r\nHost: 127.0.0.1:50052\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nhost: x\r\nContent-Length: 4\r\n\r\nid\n",
            b"PUT /a HTTP/1.0\r\n\r\n",
            b"HEAD / HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"DELETE /x",
            b"PATCH /x",
            b"CONNECT example.com:443 HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(probe(request), HttpProbe::Http(_)),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn a_host_line_anywhere_is_http_in_any_case() {
        assert!(matches!(probe(b"echo hi\nHOST: a"), HttpProbe::Http(_)));
        assert!(matches!(probe(b"host:x"), HttpProbe::Http(_)));
        assert!(matches!(
            probe(b"junk\r\nHost: 127.0.0.1\r\n"),
            HttpProbe::Http(_)
        ));
        assert_eq!(
            probe(b"echo Host: is not at a line start"),
            HttpProbe::NotHttp
        );
        assert_eq!(probe(b"hostname"), HttpProbe::NotHttp);
    }

    #[test]
    fn a_method_cut_short_waits_for_more() {
        for prefix in [
            &b"G"[..],
            b"GE",
            b"GET",
            b"POST",
            b"OPTIO",
            b"PRI * HTT",
            b"C",
        ] {
            assert_eq!(probe(prefix), HttpProbe::Prefix, "{prefix:?}");
        }
        assert!(matches!(probe(b"GET "), HttpProbe::Http(_)));
    }

    #[test]
    fn shell_commands_are_not_http() {
        for command in [
            &b"ls -l /tmp"[..],
            b"get /x",
            b"GETX",
            b"echo GET / HTTP/1.1",
            b"Post",
            b"",
            b"df",
        ] {
            assert_eq!(probe(command), HttpProbe::NotHttp, "{command:?}");
        }
    }

    proptest! {
        /// However an HTTP request is cut, its first part is never taken
        /// for a command: it is HTTP, or a prefix that waits for more.
        #[test]
        fn every_cut_of_a_request_line_is_http_or_waits(
            method in prop::sample::select(&REQUEST_LINE_STARTS[..]),
            rest in "[ -~]{0,40}",
            cut in any::<prop::sample::Index>(),
        ) {
            let request = [method, rest.as_bytes()].concat();
            let cut = 1 + cut.index(request.len());
            prop_assert_ne!(probe(&request[..cut]), HttpProbe::NotHttp);
        }

        /// Text starting with a lowercase letter (every usual command) is
        /// never HTTP without a Host: line.
        #[test]
        fn lowercase_commands_without_a_host_line_are_not_http(text in "[a-z][^\n]{0,60}") {
            prop_assume!(!text.to_ascii_lowercase().starts_with("host:"));
            prop_assert_eq!(probe(text.as_bytes()), HttpProbe::NotHttp);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = probe(&bytes);
        }
    }
}
