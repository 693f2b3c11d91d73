//! `GET /`: the live status page, one HTML file with its script and styles inline, compiled
//! into the binary. It polls `GET /v1/status` every second and draws the nodes and the
//! partitions (coloured by leader, marked by health); no build step, nothing fetched from
//! elsewhere, so it works on a machine without internet access.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;

/// The page, as served.
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// What the page may load: its own inline script and styles, and requests to this gateway.
/// Nothing else, so a cluster name or address that looks like markup can do no harm even if a
/// bug rendered it as HTML.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
pub async fn status_page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page is small and changes with the binary: always revalidate.
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
        ],
        STATUS_PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_polls_the_status() {
        // Nothing from elsewhere: no URL with a scheme or a protocol-relative one.
        for outside in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(
                !STATUS_PAGE.contains(outside),
                "the page refers to {outside}"
            );
        }
        assert!(STATUS_PAGE.contains("fetch(\"/v1/status\""));
        // The elements the headless-browser test reads.
        for id in [
            "id=\"node-count\"",
            "id=\"led-count\"",
            "id=\"partition-grid\"",
        ] {
            assert!(STATUS_PAGE.contains(id), "missing {id}");
        }
    }
}
