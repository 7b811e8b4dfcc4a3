//! The web dashboard (`--http-listen`) against real `woof node start`
//! processes: in Debian's Chromium, headless, driven through ChromeDriver's
//! WebDriver API, what a user sees (the nodes, a topic's count going up
//! while the test appends, its live tail, a killed node turning red), with
//! screenshots; and, without a browser, that it asks for the same tokens
//! as the API.
//!
//! The screenshots go to `$WOOF_SCREENSHOTS_DIR` if set (the ones in
//! `docs/dashboard/` were made with `WOOF_SCREENSHOTS_DIR=$PWD/docs/dashboard
//! cargo test -p woof-node --test dashboard`), else to the test's
//! temporary directory. `./dev` installs `chromium` and `chromium-driver`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::http::{Answer, events, get, request};
use common::{NodeProcess, free_tcp_port, root_key, token, woof};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process and one headless Chromium session in it.
struct Browser {
    driver: SocketAddr,
    session: String,
    _process: tokio::process::Child,
}

impl Browser {
    async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "this test needs {bin}: `apt-get install -y chromium chromium-driver` \
                 (./dev does so when they are missing)"
            );
        }
        let port = free_tcp_port();
        let driver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let process = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(a) = get(driver, "/status").await
                && a.status == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
        }}});
        let answer = call(driver, "POST", "/session", &caps).await;
        let session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Self {
            driver,
            session,
            _process: process,
        }
    }

    async fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(self.driver, method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.command("POST", "/url", &json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page: what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            &json!({"script": script, "args": []}),
        )
        .await
    }

    /// Evaluates `script` until `done` holds of what it returns.
    async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(script).await;
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 30 s; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the element `css` selects, as a user would.
    async fn click(&self, css: &str) {
        let found = self
            .command(
                "POST",
                "/element",
                &json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.command("POST", &format!("/element/{id}/click"), &json!({}))
            .await;
    }

    /// Saves a screenshot of the window as `name`: its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let shot = self.command("GET", "/screenshot", &Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("a screenshot is base64 text"))
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let dir = std::env::var_os("WOOF_SCREENSHOTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &png).unwrap();
        path
    }
}

impl Drop for Browser {
    /// Ends the session, which closes Chromium (killing ChromeDriver alone
    /// would leave the browser running); blocking, and bounded to 10 s.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(self.driver) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.session, self.driver
        );
        if s.write_all(request.as_bytes()).is_ok() {
            // The answer comes once the browser is gone.
            let _ = s.read(&mut [0u8; 1024]);
        }
    }
}

/// One WebDriver call: its `value`, or a panic with the driver's error.
async fn call(driver: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let answer = request(driver, method, path, &[], &text)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let v: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", answer.body));
    assert_eq!(answer.status, 200, "{method} {path}: {v}");
    v["value"].clone()
}

/// Appends `{"reading": N}` to `topic` at `url` every 50 ms until stopped:
/// how many were acknowledged.
fn appender(
    url: String,
    topic: &'static str,
    from: u64,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut client = common::connect(&url).await;
        let mut n = from;
        while !*stopped.borrow() {
            n += 1;
            common::append(&mut client, topic, format!("{{\"reading\": {n}}}")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium_shows_the_cluster_live() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::keygen(dir.path());
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let first = common::start_node(
        &dir.path().join("n0"),
        &key,
        &["--tier", "cloud", "--http-listen", &http.to_string()],
    );
    let join = common::overlay_addr(&first.url);
    let mut nodes = vec![first];
    for (i, attrs) in [(1, "site=north"), (2, "site=south")] {
        nodes.push(common::start_node(
            &dir.path().join(format!("n{i}")),
            &key,
            &["--join", &join, "--tier", "edge", "--attr", attrs],
        ));
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    common::wait_alive(&urls, 3);
    let peers: Vec<String> = nodes.iter().map(|n| common::peer_id(&n.url)).collect();
    let topic = "farm/north/temp";
    let mut client = common::connect(&nodes[0].url).await;
    common::create_replicated(&mut client, topic, 3, "").await;
    for n in 1..=10 {
        common::append(&mut client, topic, format!("{{\"reading\": {n}}}")).await;
    }

    // A handler copying the readings to another topic, and a device.
    common::create_replicated(&mut client, "farm/north/copy", 3, "").await;
    let deployed = woof(&[
        "--server",
        &nodes[0].url,
        "handler",
        "deploy",
        topic,
        "copy",
        "--native",
        "forward",
        "--config",
        r#"{"to":"farm/north/copy"}"#,
    ]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    common::add_device(&nodes[0].url, "probe-7", "farm/north/**", &[]);

    let browser = Browser::start().await;
    browser.open(&format!("http://{http}/")).await;

    // The three nodes, alive, each by its peer id.
    let shown = browser
        .wait_for(
            "three nodes alive",
            "return [...document.querySelectorAll('#nodes tbody tr.alive')]\
                .map(r => r.dataset.peer).sort()",
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    let mut expected = peers.clone();
    expected.sort();
    assert_eq!(shown, json!(expected));
    assert_eq!(
        browser
            .eval("return document.getElementById('conn').textContent")
            .await,
        "live"
    );

    // The topic, its 10 elements, a leader, every replica caught up.
    let row = format!("#topics tr[data-topic='{topic}']");
    browser
        .wait_for(
            "the topic at 10",
            &format!(
                "const r = document.querySelector(\"{row}\"); \
                      return r && r.querySelector('.last-seq').textContent"
            ),
            |v| v == "10",
        )
        .await;

    // Its count goes up while the test appends, with a rate.
    let (stop, appending) = appender(nodes[0].url.clone(), topic, 10);
    let seen = browser
        .wait_for(
            "the count going up",
            &format!(
                "const r = document.querySelector(\"{row}\"); \
                      return [Number(r.querySelector('.last-seq').textContent), \
                              Number(r.querySelector('.rate').textContent)]"
            ),
            |v| v[0].as_u64().is_some_and(|n| n >= 40) && v[1].as_f64().is_some_and(|r| r > 0.0),
        )
        .await;
    let later = browser
        .wait_for(
            "the count going up again",
            &format!("return Number(document.querySelector(\"{row} .last-seq\").textContent)"),
            |v| v.as_u64() > seen[0].as_u64(),
        )
        .await;
    assert!(later.as_u64().unwrap() > 40, "{later}");

    // A click on the topic opens its live tail, which shows new readings.
    browser.click(&row).await;
    let tail_seq = browser
        .wait_for(
            "the tail",
            "const li = document.querySelector('#tail-lines li[data-seq]'); \
             return li ? [Number(li.dataset.seq), li.textContent] : null",
            |v| v[0].as_u64().is_some_and(|s| s > later.as_u64().unwrap()),
        )
        .await;
    let newest = tail_seq[0].as_u64().unwrap();
    assert!(
        tail_seq[1]
            .as_str()
            .unwrap()
            .contains(&format!("{{\"reading\": {newest}}}")),
        "element {newest} shows its payload: {tail_seq}"
    );
    // The handler, where it runs and how far it got; the device.
    let handler = browser
        .wait_for(
            "the handler",
            &format!(
                "const r = document.querySelector(\"#handlers tr[data-handler='{topic}/copy']\"); \
                      return r ? [...r.cells].map(c => c.textContent) : null"
            ),
            |v| {
                v[5].as_str()
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_some_and(|d| d >= 10)
            },
        )
        .await;
    assert_eq!(handler[2], "native forward", "{handler}");
    assert_eq!(handler[3], "leader()", "{handler}");
    assert!(
        handler[4].as_str().unwrap().starts_with("node-"),
        "runs on a node: {handler}"
    );
    assert_eq!(handler[7], "running", "{handler}");
    let device = browser
        .eval(
            "const r = document.querySelector(\"#devices tr[data-device='probe-7']\"); \
               return r && r.cells[1].textContent",
        )
        .await;
    assert_eq!(device, "farm/north/**");
    let cluster_png = browser.screenshot("dashboard-cluster.png").await;

    // Nothing was loaded from anywhere but this node.
    let loaded = browser
        .eval("return performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    for name in loaded.as_array().unwrap() {
        assert!(
            name.as_str()
                .unwrap()
                .starts_with(&format!("http://{http}/")),
            "the page loaded {name}"
        );
    }
    stop.send(true).unwrap();
    let appended = appending.await.unwrap();
    assert!(appended > 40);

    // Kill node 2: its row turns red.
    let dead = peers[2].clone();
    nodes[2].kill_hard();
    let killed_at = Instant::now();
    let red = browser
        .wait_for(
            "the killed node turning red",
            &format!(
                "const r = document.querySelector(\"#nodes tr[data-peer='{dead}']\"); \
                      return r ? [r.className, getComputedStyle(r.querySelector('.state')).color, \
                                  r.querySelector('.state').textContent] : null"
            ),
            |v| v[0].as_str().is_some_and(|c| c.contains("down")),
        )
        .await;
    assert_eq!(red[1], "rgb(198, 40, 40)", "drawn red: {red}");
    assert!(
        red[2].as_str().unwrap().contains("suspected") || red[2].as_str().unwrap().contains("gone")
    );
    eprintln!("node 2 shown down {:?} after the kill", killed_at.elapsed());
    // The others stay green.
    let alive = browser
        .eval("return [...document.querySelectorAll('#nodes tbody tr.alive')].map(r => r.dataset.peer).sort()")
        .await;
    let mut survivors = peers[..2].to_vec();
    survivors.sort();
    assert_eq!(alive, json!(survivors));
    let down_png = browser.screenshot("dashboard-node-down.png").await;
    for png in [&cluster_png, &down_png] {
        let size = std::fs::metadata(png).unwrap().len();
        assert!(
            size > 20_000,
            "{} is {size} bytes: a blank page?",
            png.display()
        );
        eprintln!("screenshot: {}", png.display());
    }
}

/// The answer's JSON body.
fn body(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_same_tokens_as_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (root, public) = root_key(dir.path());
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let node = NodeProcess::start(&[
        "--data-dir",
        dir.path().join("n").to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        &http.to_string(),
        "--require-token",
        "--token-root",
        public.to_str().unwrap(),
    ]);
    let admin = token(&root, "**", "admin,read,append", "1h");
    for t in ["farm/north/a", "city/b"] {
        for args in [vec!["topic", "create", t], vec!["append", t, "{\"v\": 1}"]] {
            let mut all = vec!["--server", node.url.as_str(), "--token", &admin];
            all.extend(args);
            let out = woof(&all);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let farm = token(&root, "farm/**", "read,subscribe", "1h");

    // The page itself needs no token, and loads nothing from elsewhere.
    let page = get(http, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("woof dashboard"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    // No token, a bad one: UNAUTHENTICATED, as 401.
    let none = get(http, "/api/view").await.unwrap();
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(body(&none)["code"], "UNAUTHENTICATED");
    let bad = get(http, "/api/view?token=not-a-token").await.unwrap();
    assert_eq!(bad.status, 401, "{}", bad.body);
    let header = request(
        http,
        "GET",
        "/api/view",
        &[("Authorization", "Bearer nonsense")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(header.status, 401, "{}", header.body);

    // A token for farm/**: the view lists only what it may read.
    let view = get(http, &format!("/api/view?token={farm}")).await.unwrap();
    assert_eq!(view.status, 200, "{}", view.body);
    let view = body(&view);
    let names: Vec<&str> = view["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["farm/north/a"]);
    assert_eq!(view["topics"][0]["last_seq"], 1);
    // The same token in the header.
    let by_header = request(
        http,
        "GET",
        "/api/view",
        &[("Authorization", &format!("Bearer {farm}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(by_header.status, 200, "{}", by_header.body);

    // The live streams: views come each second; a refusal ends the stream.
    let (answer, views) = events(
        http,
        &format!("/api/events?token={farm}"),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(views.len(), 2, "{views:?}");
    assert!(views.iter().all(|(name, _)| name == "view"));
    let t0: Value = serde_json::from_str(&views[0].1).unwrap();
    let t1: Value = serde_json::from_str(&views[1].1).unwrap();
    let apart = t1["time_ms"].as_u64().unwrap() - t0["time_ms"].as_u64().unwrap();
    assert!((800..3000).contains(&apart), "views {apart} ms apart");
    let (_, refused) = events(http, "/api/events", 5, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "one failure, then the end: {refused:?}");
    assert_eq!(refused[0].0, "failure");
    assert!(refused[0].1.contains("UNAUTHENTICATED"), "{}", refused[0].1);

    // A tail of a topic the token covers, and of one it does not.
    let (_, tail) = events(
        http,
        &format!("/api/tail?topic=farm%2Fnorth%2Fa&token={farm}"),
        1,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(tail.len(), 1, "{tail:?}");
    let first: Value = serde_json::from_str(&tail[0].1).unwrap();
    assert_eq!(first["elements"][0]["seq"], 1);
    assert_eq!(first["elements"][0]["text"], "{\"v\": 1}");
    let (_, denied) = events(
        http,
        &format!("/api/tail?topic=city%2Fb&token={farm}"),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0].1.contains("PERMISSION_DENIED"), "{}", denied[0].1);

    // Bad requests: a clear refusal, and the node goes on serving.
    let post = request(http, "POST", "/api/view", &[], "{}").await.unwrap();
    assert_eq!(post.status, 405);
    let long = get(http, &format!("/api/view?token={}", "x".repeat(9000)))
        .await
        .unwrap();
    assert_eq!(long.status, 400, "{}", long.body);
    let escape = get(http, "/api/view?token=%zz").await.unwrap();
    assert_eq!(escape.status, 400, "{}", escape.body);
    let no_topic = get(http, "/api/tail").await.unwrap();
    assert_eq!(no_topic.status, 400);
    let still = get(http, &format!("/api/view?token={farm}")).await.unwrap();
    assert_eq!(still.status, 200);
}
