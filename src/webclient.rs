//! The built-in web client: a single page (web/index.html, web/app.js, web/app.css) that
//! speaks plain SECoP over the node's own WebSocket (`/ws`). The files are compiled into
//! the binary; build.rs gzips them once, so nothing is compressed at run time.
//!
//! `GET /` is the page (the node's equipment id filled in, asset URLs carrying their
//! content hash), `GET /assets/<name>` the assets. Every response carries a strict
//! Content-Security-Policy: only this origin's scripts, styles, images and connections
//! (SECURITY.md).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// One file of web/, as built by build.rs.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub gzip: &'static [u8],
    /// A hash of `body` (hex): the ETag, and the `?v=` of the page's asset URLs.
    pub tag: &'static str,
}

/// Every asset under /assets/.
pub static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

const INDEX: &str = include_str!("../web/index.html");

/// The page's policy: nothing but this origin, no inline script or style, no framing,
/// no form posts. `connect-src 'self'` covers the same-origin `ws:`/`wss:` socket (CSP 3).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Versioned asset URLs are cached for a year; a URL without the current hash is
/// revalidated every time.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page of node `equipment_id`: the title is filled in here (so that it shows before
/// the WebSocket is up); everything else comes over SECoP.
pub fn index_page(equipment_id: &str) -> HttpResponse {
    let mut page = INDEX.replace("{{TITLE}}", &escape(equipment_id));
    for a in ASSETS {
        page = page.replace(&format!("{{{{V:{}}}}}", a.name), a.tag);
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .body(page)
}

/// Whether the client takes gzip (`Accept-Encoding`, q > 0).
fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// `GET /assets/<name>`: the file, gzipped if the client takes it; 304 for a matching
/// `If-None-Match`.
pub async fn serve_asset(req: HttpRequest) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(a) = asset(name) else {
        return HttpResponse::NotFound().body("not found\n");
    };
    let etag = format!("\"{}\"", a.tag);
    let versioned = req
        .query_string()
        .split('&')
        .any(|p| p.strip_prefix("v=") == Some(a.tag));
    let cache = if versioned { IMMUTABLE } else { REVALIDATE };
    let matches = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    if matches {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, cache))
            .insert_header((header::VARY, "Accept-Encoding"))
            .finish();
    }
    let mut response = HttpResponse::Ok();
    response
        .content_type(a.content_type)
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY));
    if accepts_gzip(&req) {
        response
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(a.gzip)
    } else {
        response.body(a.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn assets_are_embedded_and_gzipped() {
        for name in ["app.js", "app.css", "icon.svg"] {
            let a = asset(name).expect(name);
            assert!(!a.body.is_empty() && a.gzip.len() < a.body.len(), "{name}");
            assert_eq!(&a.gzip[..2], &[0x1f, 0x8b], "{name} is gzip");
        }
    }

    #[test]
    fn index_names_the_node_and_versions_its_assets() {
        let page = INDEX.replace("{{TITLE}}", &escape("<x>"));
        assert!(page.contains("&lt;x&gt;") || !INDEX.contains("{{TITLE}}"));
        assert!(INDEX.contains("{{V:app.js}}") && INDEX.contains("{{V:app.css}}"));
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
    }

    #[test]
    fn gzip_negotiation() {
        let with = |v: &str| {
            accepts_gzip(
                &TestRequest::default()
                    .insert_header((header::ACCEPT_ENCODING, v))
                    .to_http_request(),
            )
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(!with("gzip;q=0"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&TestRequest::default().to_http_request()));
    }
}
