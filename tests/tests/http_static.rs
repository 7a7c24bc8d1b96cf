//! Static files served by the interface: content types, ETag and 304,
//! Cache-Control, HEAD, large files, and paths that try to leave the mount.

mod http_common;

use bytes::Bytes;
use http::Method;
use http_common::{get, Client, Options, RunDir, Stack};

fn site(dir: &RunDir) -> std::path::PathBuf {
    let www = dir.path.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::write(dir.path.join("secret.txt"), "outside the mount").unwrap();
    std::fs::write(www.join("index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(www.join("app.js"), "console.log(1);").unwrap();
    std::fs::write(www.join("style.css"), "body{}").unwrap();
    std::fs::write(www.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(www.join("sub").join("page.html"), "<p>sub</p>").unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 256) as u8).collect();
    std::fs::write(www.join("big.bin"), big).unwrap();
    std::os::unix::fs::symlink(dir.path.join("secret.txt"), www.join("escape.txt")).unwrap();
    www
}

async fn stack() -> (Stack, RunDir) {
    let files = RunDir::new("http-static-files");
    let www = site(&files);
    let options = Options {
        interface_args: vec![
            "--static".into(),
            format!("/static/={}", www.display()),
            "--static".into(),
            format!("/test/={}", http_common::repo_root().join("web/test").display()),
            "--static-max-age".into(),
            "300".into(),
        ],
        workers: Vec::new(),
        ..Options::default()
    };
    (Stack::start("http-static", options).await, files)
}

#[tokio::test]
async fn files_with_types_etags_and_304() {
    let (stack, _files) = stack().await;
    let mut client = Client::connect(&stack.addr).await.unwrap();

    for (path, content_type) in [
        ("/static/", "text/html; charset=utf-8"),
        ("/static/index.html", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/logo.png", "image/png"),
        ("/static/sub/page.html", "text/html; charset=utf-8"),
    ] {
        let file = client.get(path).await.unwrap();
        assert_eq!(file.status, 200, "{path}");
        assert_eq!(file.header("content-type"), Some(content_type), "{path}");
        assert_eq!(file.header("cache-control"), Some("public, max-age=300"), "{path}");
        assert_eq!(file.header("x-content-type-options"), Some("nosniff"), "{path}");
        let etag = file.header("etag").expect("an ETag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let cached = client
            .send(Method::GET, path, &[("if-none-match", &etag)], Bytes::new())
            .await
            .unwrap();
        assert_eq!(cached.status, 304, "{path}");
        assert!(cached.body.is_empty());
        assert_eq!(cached.header("etag"), Some(etag.as_str()));
        assert_eq!(cached.header("cache-control"), Some("public, max-age=300"));

        let weak = format!("W/{etag}");
        let other = client
            .send(
                Method::GET,
                path,
                &[("if-none-match", &format!("\"other\", {weak}"))],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(other.status, 304, "{path}: weak match in a list");
        let stale = client
            .send(Method::GET, path, &[("if-none-match", "\"stale\"")], Bytes::new())
            .await
            .unwrap();
        assert_eq!(stale.status, 200, "{path}: a stale tag gets the file");
    }
    assert_eq!(client.get("/static/index.html").await.unwrap().text(), "<h1>index</h1>");

    let head = client
        .send(Method::HEAD, "/static/app.js", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("15"));

    let big = client.get("/static/big.bin").await.unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 3 * 1024 * 1024);
    assert!(big.body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));

    assert_eq!(client.get("/static/missing.txt").await.unwrap().status, 404);
    let post = client.send(Method::POST, "/static/app.js", &[], "x").await.unwrap();
    assert_eq!(post.status, 405);
    let moved = client.get("/static/sub").await.unwrap();
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("/static/sub/"));
    let mount = client.get("/static").await.unwrap();
    assert_eq!(mount.status, 301);
    assert_eq!(mount.header("location"), Some("/static/"));
}

#[tokio::test]
async fn paths_that_leave_the_mount_are_refused() {
    let (stack, _files) = stack().await;
    for path in [
        "/static/../secret.txt",
        "/static/sub/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/sub/..%2f..%2fsecret.txt",
        "/static/..%5csecret.txt",
        "/static/escape.txt",
        "/static/index.html%00.png",
    ] {
        // A raw request: clients would normalise these paths away.
        let reply = get(&stack.addr, path).await.unwrap();
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
        assert!(!reply.text().contains("outside the mount"), "{path}");
    }
}

#[tokio::test]
async fn the_test_page_is_a_static_file() {
    let (stack, _files) = stack().await;
    let mut client = Client::connect(&stack.addr).await.unwrap();
    let page = client.get("/test/").await.unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("Switchyard test page"));
    let etag = page.header("etag").unwrap().to_owned();
    let cached = client
        .send(Method::GET, "/test/", &[("if-none-match", &etag)], Bytes::new())
        .await
        .unwrap();
    assert_eq!(cached.status, 304);
}
