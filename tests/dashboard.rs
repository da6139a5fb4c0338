//! The live dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver, looking at `/dashboard` while load runs, as a
//! person would: a row per model with its throughput, and an application's chart of weight
//! shares that moves when feedback comes in. It leaves a screenshot at
//! `target/tmp/dashboard.png` (the one in `docs/` was taken this way).

use crate::selection::{application, exp4, feedback, register};
use crate::support::{TestServer, digits_request, post_json};
use base64::Engine;
use serde_json::{Value, json};
use sluice_samples::SAMPLE_MODELS;
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::registry::LoadRequest;
use sluice_train::Digits;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A headless Chromium session through chromedriver.
struct Browser {
    driver: Child,
    session: String,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): the dashboard test drives a real browser; \
                     install it (Debian: apt-get install chromium chromium-driver)"
                )
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"
            ]}
        }}});
        let created = post_json(&http, &format!("{base}/session"), &capabilities).await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser {
            driver,
            session,
            base,
            http,
        }
    }

    async fn post(&self, command: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{command}", self.base, self.session);
        post_json(&self.http, &url, &body).await["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.post("url", json!({ "url": url })).await;
    }

    /// What `script` (a function body) returns in the page.
    async fn eval(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Waits (up to 30 s) until `script` returns something truthy, and returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(script).await;
            if !value.is_null() && value != json!(false) && value != json!("") {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not on the page within 30 s: {what} (last: {value})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(answer["value"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium and its helper processes;
        // killing chromedriver alone left them running after the test.
        let _ = end_session(&self.base, &self.session);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` as a plain blocking request (a drop has no runtime to await in);
/// chromedriver answers once the browser has quit (its answer is not read past its start:
/// chromedriver may keep the connection open).
fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    stream.read(&mut [0; 512]).map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_models_under_load_and_a_chart_that_moves_with_feedback() {
    let mut server = TestServer::with_samples().await;
    // The logistic regression with its classes rotated: wrong on nearly every digit, so
    // feedback moves the weight away from it.
    let logreg = SAMPLE_MODELS
        .iter()
        .find(|m| m.name == "digits-logreg")
        .unwrap();
    server
        .registry
        .load(LoadRequest {
            component: logreg.component.to_vec(),
            config: crate::selection::rotated_logreg_config(),
            graphs: Vec::new(),
            name: Some("digits-rotated".into()),
            version: None,
            replicas: 1,
            autoscale: None,
            limits: ModelLimits::default(),
            batching: BatchingConfig::default(),
        })
        .await
        .unwrap();
    register(
        &mut server,
        application(
            "watched",
            &["digits-logreg", "digits-rotated"],
            1000,
            exp4(),
        ),
    )
    .await;
    let digits = Digits::load_default().unwrap();

    // Steady load on digits-logreg while the page is looked at.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (mut client, stop) = (server.client.clone(), stop.clone());
        let samples = digits.holdout[..8].to_vec();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .predict(digits_request("digits-logreg", &samples))
                    .await
                    .unwrap();
            }
        })
    };

    let browser = Browser::start().await;
    browser
        .open(&format!("{}/dashboard", server.http_url()))
        .await;
    let row = r#"document.querySelector('tr[data-model="digits-logreg@1"]')"#;
    let throughput = browser
        .until(
            "digits-logreg's row with a throughput",
            &format!("const r = {row}; const t = r && parseFloat(r.querySelector('.throughput').textContent); return t > 0 ? t : null;"),
        )
        .await;
    assert!(throughput.as_f64().unwrap() > 0.0);
    let replicas = browser
        .eval(&format!(
            "return {row}.querySelector('.replicas').textContent;"
        ))
        .await;
    assert_eq!(replicas, json!("2"));
    let compute = browser
        .eval("return document.getElementById('compute').textContent;")
        .await;
    assert_eq!(compute, json!("cpu"));

    let app = r#"document.querySelector('section[data-app="watched"]')"#;
    let rotated_line = format!(
        "{app}.querySelector('polyline[data-arm=\"digits-rotated\"]').getAttribute('points')"
    );
    browser
        .until(
            "the application with no feedback yet",
            &format!("const a = {app}; return a && a.querySelector('.feedback-count').textContent === '0';"),
        )
        .await;
    let before = browser.eval(&format!("return {rotated_line};")).await;

    for sample in &digits.holdout[..30] {
        feedback(&mut server, "watched", "", sample).await;
    }
    browser
        .until(
            "the feedback count after 30 feedbacks",
            &format!("return {app}.querySelector('.feedback-count').textContent === '30';"),
        )
        .await;
    let share = browser
        .eval(&format!(
            "return parseFloat({app}.querySelector('tr[data-arm=\"digits-rotated\"] .share').textContent);"
        ))
        .await;
    assert!(
        share.as_f64().unwrap() < 0.5,
        "the always-wrong model lost weight: {share}"
    );
    let after = browser
        .until(
            "the chart redrawn with the new weights",
            &format!("const p = {rotated_line}; return p !== {before} ? p : null;"),
        )
        .await;
    // The newest point of the rotated model's line is lower on the chart (a smaller share)
    // than the first one.
    let ys: Vec<f64> = after
        .as_str()
        .unwrap()
        .split(' ')
        .map(|point| point.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        ys.last().unwrap() > ys.first().unwrap(),
        "the line went down: {after}"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"),
        png,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}

/// With an admin token the dashboard, like every admin endpoint, needs it: as a bearer header,
/// or in the page's address for a browser (the page then sends it as a header).
#[tokio::test]
async fn the_dashboard_is_behind_the_admin_token_when_one_is_set() {
    let server = TestServer::start(|server| server.admin_token(Some("s3cret".to_string()))).await;
    let http = reqwest::Client::new();
    let get = async |path: &str, bearer: Option<&str>| {
        let mut request = http.get(format!("{}{path}", server.http_url()));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    };
    assert_eq!(get("/dashboard", None).await.status(), 401);
    assert_eq!(get("/sluice/v1/dashboard", None).await.status(), 401);
    assert_eq!(get("/dashboard?token=wrong", None).await.status(), 401);
    let page = get("/dashboard?token=s3cret", None).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<title>sluice</title>"));
    let snapshot = get("/sluice/v1/dashboard", Some("s3cret")).await;
    assert_eq!(snapshot.status(), 200);
    let snapshot: Value = snapshot.json().await.unwrap();
    assert_eq!(snapshot["compute"], json!("cpu"));
}
