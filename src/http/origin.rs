//! Same-origin checks for what a browser may be tricked into sending: a WebSocket opened by a
//! page on another site (cross-site WebSocket hijacking), and a cross-site form post to a route
//! that changes state (`POST /api/sticky/forget`, …). An origin is scheme, host and port, all
//! three compared; the page's scheme comes from [`crate::peer::Peer::scheme`]. Requests without
//! `Origin` are not from a browser page (scripts, the load tool) and pass. Which requests are
//! checked is decided by the callers ([`super::ws`], [`crate::server`]).

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

use crate::peer::Scheme;

/// `Origin` is this page's own (scheme, host and port), or one `ALLOWED_ORIGINS` names ("*"
/// allows all); no `Origin` at all passes.
pub fn origin_allowed(headers: &HeaderMap, page: Scheme, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, origin_host)) = origin.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(page.as_str()) {
        return false;
    }
    let default_port = match page {
        Scheme::Http => ":80",
        Scheme::Https => ":443",
    };
    let strip = |h: &str| {
        let h = h.to_ascii_lowercase();
        h.strip_suffix(default_port).map(str::to_owned).unwrap_or(h)
    };
    strip(origin_host) == strip(host)
}

/// A state-changing request a browser sent for a page of another site: its `Origin` is not
/// allowed, or (a browser that sends no `Origin`) `Sec-Fetch-Site` says cross-site.
pub fn cross_site(headers: &HeaderMap, page: Scheme, allowed: &[String]) -> bool {
    if headers.contains_key(ORIGIN) {
        return !origin_allowed(headers, page, allowed);
    }
    headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn with_origin(origin: &'static str, host: &'static str) -> HeaderMap {
        headers(&[("origin", origin), ("host", host)])
    }

    #[test]
    fn same_origin_and_non_browser_requests_pass() {
        let http = Scheme::Http;
        assert!(origin_allowed(
            &with_origin("http://127.0.0.1:8080", "127.0.0.1:8080"),
            http,
            &[]
        ));
        assert!(origin_allowed(
            &with_origin("http://Example.com", "example.com:80"),
            http,
            &[]
        ));
        assert!(origin_allowed(
            &with_origin("https://example.com", "example.com:443"),
            Scheme::Https,
            &[]
        ));
        assert!(origin_allowed(
            &headers(&[("host", "127.0.0.1:8080")]),
            http,
            &[]
        ));
    }

    #[test]
    fn the_scheme_is_part_of_the_origin() {
        // The page was served over http; an https page of the same host is another origin.
        assert!(!origin_allowed(
            &with_origin("https://127.0.0.1:8080", "127.0.0.1:8080"),
            Scheme::Http,
            &[]
        ));
        assert!(!origin_allowed(
            &with_origin("https://example.com", "example.com"),
            Scheme::Http,
            &[]
        ));
        assert!(!origin_allowed(
            &with_origin("http://example.com", "example.com"),
            Scheme::Https,
            &[]
        ));
        // The default port is the scheme's own: :443 is not http's default.
        assert!(!origin_allowed(
            &with_origin("http://example.com", "example.com:443"),
            Scheme::Http,
            &[]
        ));
    }

    #[test]
    fn other_origins_are_refused_unless_allowed() {
        let evil = with_origin("http://evil.example", "127.0.0.1:8080");
        assert!(!origin_allowed(&evil, Scheme::Http, &[]));
        assert!(!origin_allowed(
            &with_origin("null", "127.0.0.1:8080"),
            Scheme::Http,
            &[]
        ));
        assert!(!origin_allowed(
            &with_origin("http://127.0.0.1:9", "127.0.0.1:8080"),
            Scheme::Http,
            &[]
        ));
        assert!(origin_allowed(
            &evil,
            Scheme::Http,
            &["http://evil.example".to_owned()]
        ));
        assert!(origin_allowed(&evil, Scheme::Http, &["*".to_owned()]));
    }

    #[test]
    fn cross_site_posts_are_told_from_same_origin_and_scripts() {
        let http = Scheme::Http;
        let form = with_origin("http://evil.example", "127.0.0.1:8080");
        assert!(cross_site(&form, http, &[]));
        let page = with_origin("http://127.0.0.1:8080", "127.0.0.1:8080");
        assert!(!cross_site(&page, http, &[]));
        let old_browser = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&old_browser, http, &[]));
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(!cross_site(&same, http, &[]));
        let script = headers(&[("host", "127.0.0.1:8080")]);
        assert!(!cross_site(&script, http, &[]));
        assert!(!cross_site(
            &form,
            http,
            &["http://evil.example".to_owned()]
        ));
    }
}
