//! The web client as people use it: the browser specs (`web/e2e/`, Playwright driving
//! Debian's Chromium, axe on every page) against `canopy up` serving its compiled-in
//! client at `/`, with live results over its socket.io endpoint. `scripts/test` installs
//! Chromium and the client's npm packages.

use std::path::Path;

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_works_in_a_real_browser_against_the_node() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        web.join("node_modules/.bin/playwright").exists(),
        "the client's packages are not installed: run `npm ci` in {} (scripts/test does)",
        web.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: apt-get install chromium (scripts/test does), or set CHROMIUM"
    );
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut node = start(data.path(), port);
    let client = canopy_testkit::http_client();
    wait_healthy(&client, &base).await;
    // The node itself serves the client: a page of it is index.html, an API route is not.
    let page = client
        .get(format!("{base}/decisions"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(page.text().await.unwrap().contains("<div id=\"root\">"));
    let missing = client
        .get(format!("{base}/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    create_admin(data.path());
    let env = vec![
        ("BASE_URL", base),
        ("CANOPY_ADMIN_USER", "root".to_string()),
        ("CANOPY_ADMIN_PASSWORD", PASSWORD.to_string()),
        ("CHROMIUM", chromium),
    ];
    let ran = node_script(web, &["scripts/e2e.mjs"], env, data.path()).await;
    kill_9(&mut node);
    let stdout = ran.unwrap_or_else(|failure| panic!("{failure}"));
    // Every spec ran: the live one needs the node's socket.io, which it has.
    assert!(stdout.contains(" 0 failed, 0 skipped"), "{stdout}");
}
