//! The console's files (docs/console.md): every script the page loads is served, as JavaScript, with
//! the strict Content-Security-Policy; none is served when the console is off.

use reqwest::StatusCode;

use crate::harness::*;

/// The `src` of every `<script>` in the page.
fn scripts(html: &str) -> Vec<String> {
    html.split("<script src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_script_of_the_page_is_served_with_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.console = true;
    let r = Registry::with_config(config, dir).await;
    let page = r
        .client
        .get(format!("{}/console", r.url))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    let srcs = scripts(&html);
    for want in ["console.js", "limits.js", "gateways.js", "charts.js"] {
        assert!(
            srcs.iter().any(|s| s == &format!("/console/{want}")),
            "{want} not loaded by the page: {srcs:?}"
        );
    }
    for src in &srcs {
        let a = r
            .client
            .get(format!("{}{src}", r.url))
            .send()
            .await
            .expect("script");
        assert_eq!(a.status(), StatusCode::OK, "{src}");
        let header = |n: &str| {
            a.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            header("content-type").starts_with("text/javascript"),
            "{src}"
        );
        assert!(
            header("content-security-policy").contains("script-src 'self'"),
            "{src}"
        );
        let body = a.text().await.expect("body");
        assert!(body.starts_with("// Ferry console"), "{src}: {body:.60}");
    }
    r.stop().await;

    // Off (the default for a registry on its own): no page, no scripts.
    let r = Registry::sqlite().await;
    for path in ["/console", "/console/charts.js"] {
        let a = r.get(path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    r.stop().await;
}
