//! `/dashboard`: one self-contained HTML page (inline CSS and JS, no CDN, no build step),
//! embedded in the binary so an operator gets it wherever the admin listener runs. The page
//! polls `/stats` and `/health` once a second and computes rates client-side, so the server
//! keeps no per-viewer state.

/// The page, served as is.
pub const HTML: &str = include_str!("../../assets/dashboard.html");

/// Content-Type of [`HTML`].
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        assert!(HTML.starts_with("<!doctype html>"));
        // No external fetches: everything the page loads is on the admin listener.
        for external in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "fetch(\"http",
            "<link ",
        ] {
            assert!(!HTML.contains(external), "page references {external}");
        }
        for id in [
            "connections",
            "rate-in",
            "rate-out",
            "queued",
            "evictions",
            "refusals",
            "broadcast-p99",
            "depth-p99",
            "broadcast-charts",
        ] {
            assert!(HTML.contains(&format!("id=\"{id}\"")), "missing #{id}");
        }
    }
}
