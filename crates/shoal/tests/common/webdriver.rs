//! A small WebDriver client for the dashboard's browser tests: Debian's `chromium` driven by its
//! `chromedriver`, both inside a node's network namespace (where the dashboard listens on
//! loopback). Each command is one `curl` run in the namespace, so the test process needs no
//! route into it.

use super::Netns;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The key WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless chromium session.
pub struct Browser {
    netns: String,
    port: u16,
    session: String,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless chromium in `netns` (window 1280x900).
    pub fn start(netns: &Netns, port: u16) -> Browser {
        let driver = netns
            .command("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver (apt install chromium-driver)");
        let mut b = Browser {
            netns: netns.name.clone(),
            port,
            session: String::new(),
            driver,
        };
        super::wait_until(Duration::from_secs(20), "chromedriver ready", || {
            b.call("GET", "/status", None)
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .expect("chromedriver answers a new session");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns)).args([
            "curl",
            "-s",
            "--max-time",
            "60",
            "-X",
            method,
            &url,
        ]);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd.output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        let v = self
            .call(method, &p, body)
            .unwrap_or_else(|| panic!("chromedriver did not answer {method} {path}"));
        if v["value"].get("error").is_some() {
            panic!("WebDriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The page's URL now.
    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The elements matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.session_call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
            .collect()
    }

    /// Waits for an element matching `css` and returns it.
    pub fn wait_for(&self, css: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            assert!(Instant::now() < until, "no element {css} within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks an element (as a user would: it must be visible and enabled).
    pub fn click(&self, element: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Finds the first element matching `css` and clicks it, again if the page re-rendered it
    /// between the two (a live page replaces its rows when the view changes).
    pub fn click_css(&self, css: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                let p = format!("/session/{}/element/{e}/click", self.session);
                let v = self.call("POST", &p, Some(json!({}))).unwrap_or_default();
                match v["value"]["error"].as_str() {
                    None => return,
                    Some("stale element reference") => {}
                    Some(other) => panic!("WebDriver click on {css}: {other}: {}", v["value"]),
                }
            }
            assert!(
                Instant::now() < until,
                "could not click {css} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into an element after clearing it.
    pub fn type_into(&self, element: &str, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        );
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// An element's visible text.
    pub fn text(&self, element: &str) -> String {
        self.session_call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The browser's cookies for the page (name -> value).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let v = self.session_call("GET", &format!("/cookie/{name}"), None);
        v["value"].as_str().map(str::to_string)
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, to: &Path) {
        use base64::Engine;
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(to, png).unwrap();
    }

    /// Sets the window size (a phone's, for the small-screen check).
    pub fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
