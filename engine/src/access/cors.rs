//! CORS for `POST /publish/<topic>` from browser pages (the Fetch standard's CORS protocol).
//!
//! Contract (sans-IO): a cross-origin `fetch` that sets `Authorization` or a JSON
//! `Content-Type` is preceded by a preflight `OPTIONS /publish/<topic>` carrying `Origin` and
//! `Access-Control-Request-Method`. [`preflight`] answers it from `--allowed-origins` only: a
//! listed origin gets `204` naming the method (`POST`) and request headers (`Authorization`,
//! `Content-Type`) it may use, cached [`MAX_AGE_S`]; any other origin — and every origin while
//! no list is configured: cross-origin access is never granted implicitly — gets `403`, a
//! failed preflight, so the browser never sends the POST. An `OPTIONS` without `Origin` is not
//! CORS: `204` with `Allow`. The POST itself is checked like every request (origin,
//! credential); when its origin is listed, [`allow_origin`] gives the headers that let the page
//! read the response.

use super::origin::AllowedOrigins;

/// How long a browser may cache a granted preflight (seconds).
pub const MAX_AGE_S: u32 = 600;
/// Request headers a page may set on a publish.
pub const ALLOW_HEADERS: &str = "authorization, content-type";

/// Response headers of a granted preflight (or of a plain `OPTIONS`), or `None`: refuse (403).
pub fn preflight(
    origins: &AllowedOrigins,
    origin: Option<&[u8]>,
) -> Option<Vec<(&'static str, String)>> {
    let Some(origin) = origin else {
        return Some(vec![("Allow", "POST, OPTIONS".to_owned())]);
    };
    let mut headers = allow_origin(origins, Some(origin))?;
    headers.extend([
        ("Access-Control-Allow-Methods", "POST".to_owned()),
        ("Access-Control-Allow-Headers", ALLOW_HEADERS.to_owned()),
        ("Access-Control-Max-Age", MAX_AGE_S.to_string()),
    ]);
    Some(headers)
}

/// `Access-Control-Allow-Origin` (and `Vary`) for a request from a listed `origin`; `None`
/// for others, and always while no list is configured.
pub fn allow_origin(
    origins: &AllowedOrigins,
    origin: Option<&[u8]>,
) -> Option<Vec<(&'static str, String)>> {
    let origin = origin?;
    if !origins.is_on() || !origins.allows(origin) {
        return None;
    }
    // `allows` parsed it: a valid serialized origin, ASCII.
    let echoed = std::str::from_utf8(origin).ok()?.trim().to_owned();
    Some(vec![
        ("Access-Control-Allow-Origin", echoed),
        ("Vary", "Origin".to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_granted() {
        let list =
            AllowedOrigins::parse(&["https://app.example", "https://*.corp.example"]).unwrap();
        let h = preflight(&list, Some(b"https://app.example")).unwrap();
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(
            get("Access-Control-Allow-Origin"),
            Some("https://app.example")
        );
        assert_eq!(get("Access-Control-Allow-Methods"), Some("POST"));
        assert_eq!(get("Access-Control-Allow-Headers"), Some(ALLOW_HEADERS));
        assert_eq!(get("Access-Control-Max-Age"), Some("600"));
        assert_eq!(get("Vary"), Some("Origin"));
        assert!(preflight(&list, Some(b"https://x.corp.example")).is_some());
        assert!(preflight(&list, Some(b"https://evil.example")).is_none());
        assert!(preflight(&list, Some(b"null")).is_none());
        // No list: never granted; no Origin: not CORS.
        let none = AllowedOrigins::default();
        assert!(preflight(&none, Some(b"https://app.example")).is_none());
        assert!(allow_origin(&none, Some(b"https://app.example")).is_none());
        assert_eq!(preflight(&none, None).unwrap()[0].0, "Allow");
        assert!(allow_origin(&list, None).is_none());
        assert_eq!(
            allow_origin(&list, Some(b"https://app.example")).unwrap()[0].1,
            "https://app.example"
        );
    }
}
