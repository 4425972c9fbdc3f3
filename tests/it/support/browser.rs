//! Headless Chromium for the page's tests: [`Chromedriver`] on a free loopback port, and a
//! WebDriver session through it ([`Browser`]) that is closed even when the test panics.
//! Missing programs fail the test with the command that installs them; nothing is skipped.
//!
//! Commands fantoccini has no method for (the browser's console log, DevTools calls) and the
//! closing of a session from `Drop`, where no runtime may be left to drive an async client,
//! go to chromedriver as plain blocking HTTP requests on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use super::process::Proc;
use super::servers::{free_port, loopback, wait_listening};

/// Debian's `chromium-driver` and `chromium`, which `scripts/install-deps --browser` installs.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for one request to chromedriver (closing a session waits for Chromium to quit).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

pub struct Chromedriver {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it reports itself ready.
    pub fn start(log_dir: &Path) -> Chromedriver {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the browser tests need chromium and chromedriver; \
                 install them with scripts/install-deps --browser"
            );
        }
        let addr = loopback(free_port());
        // Chromium's profile and scratch files go under the test's directory, which the test
        // removes, rather than into /tmp, where a killed browser would leave them.
        let scratch = log_dir.join("chromium-tmp");
        std::fs::create_dir_all(&scratch).unwrap();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={}", addr.port()))
            .env("TMPDIR", &scratch);
        // A process group of its own: Chromium runs as chromedriver's children, and Drop ends
        // the whole group even if a session could not be closed.
        command.process_group(0);
        let mut proc = Proc::spawn("chromedriver", &mut command, log_dir);
        wait_listening(addr, &mut proc, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = request(addr, "GET", "/status", None);
            if matches!(&status, Ok(s) if s["value"]["ready"] == true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready after 10 s: {status:?}\n{}",
                proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Chromedriver { proc, addr }
    }

    /// A new headless Chromium whose viewport is `width` x `height` CSS pixels, at scale 1.
    pub async fn open(&self, width: u32, height: u32) -> Browser {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let connect = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{}", self.addr))
            .await;
        let client = connect.unwrap_or_else(|err| {
            panic!(
                "no WebDriver session from chromedriver: {err}\n{}",
                self.proc.log_tail()
            )
        });
        let session = client.session_id().await.unwrap().unwrap();
        // Our guard closes the session, with or without a runtime; fantoccini must not as well.
        client.persist().await.unwrap();
        let browser = Browser {
            client,
            driver: self.addr,
            session,
        };
        // The window's size includes space for toolbars even when headless; set the page's own.
        browser.viewport(width, height, false).await;
        browser
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.proc.log_tail());
        }
        // The group id is chromedriver's pid, which cannot be reused before `kill` reaps it.
        let group = nix::unistd::Pid::from_raw(self.proc.pid() as i32);
        if group.as_raw() > 0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        self.proc.kill();
    }
}

/// One entry of the browser's console log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
}

/// A WebDriver session; dropping it closes the session, and with it the browser.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: SocketAddr,
    session: String,
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|err| panic!("script failed: {err}\n{script}"))
    }

    /// `window.stickyws.state()`: the page's own account of what it shows.
    pub async fn state(&self) -> Value {
        self.eval("return window.stickyws.state();").await
    }

    pub async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|err| panic!("no #{id}: {err}"))
            .click()
            .await
            .unwrap_or_else(|err| panic!("clicking #{id}: {err}"));
    }

    /// Clicks the element with this id `times` times with the mouse, in one WebDriver call:
    /// quick presses, as a person's, without a round trip each.
    pub async fn press(&self, id: &str, times: usize) {
        // Pointer actions do not scroll: bring the element into view first.
        let element = self.client.find(Locator::Id(id)).await.unwrap();
        let arg = serde_json::to_value(&element).unwrap();
        self.client
            .execute(
                "arguments[0].scrollIntoView({ block: 'center' });",
                vec![arg],
            )
            .await
            .unwrap();
        let mut mouse = MouseActions::new("mouse".to_owned()).then(PointerAction::MoveToElement {
            element,
            duration: None,
            x: 0.0,
            y: 0.0,
        });
        for _ in 0..times {
            mouse = mouse
                .then(PointerAction::Down {
                    button: MOUSE_BUTTON_LEFT,
                })
                .then(PointerAction::Up {
                    button: MOUSE_BUTTON_LEFT,
                });
        }
        self.client
            .perform_actions(mouse)
            .await
            .unwrap_or_else(|err| panic!("pressing #{id}: {err}"));
    }

    /// The visible text of the element with this id.
    pub async fn text(&self, id: &str) -> String {
        let element = self.client.find(Locator::Id(id)).await.unwrap();
        element.text().await.unwrap()
    }

    /// An attribute of the element with this id (`data-state`, …), empty when absent.
    pub async fn attr(&self, id: &str, name: &str) -> String {
        let element = self.client.find(Locator::Id(id)).await.unwrap();
        element.attr(name).await.unwrap().unwrap_or_default()
    }

    /// Polls `condition` (a script returning a truthy value when done) until it holds, for at
    /// most `limit`; returns its value. On timeout the failure names `what` and shows the
    /// page's state and its newest feed entries.
    pub async fn wait_until(&self, what: &str, limit: Duration, condition: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(condition).await;
            let done = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if done {
                return value;
            }
            if Instant::now() >= deadline {
                let state = self.state().await;
                let feed = self
                    .eval(
                        "return [...document.querySelectorAll('#feed > li')].slice(0, 12)\
                         .map((li) => li.innerText.replace(/\\s+/g, ' '));",
                    )
                    .await;
                panic!(
                    "waited {limit:?} for {what}\nlast value: {value}\nstate: {state}\nfeed: {feed:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// The console entries since the last call (chromedriver hands each out once).
    pub async fn console(&self) -> Vec<LogEntry> {
        let log = self
            .command("se/log", json!({ "type": "browser" }))
            .await
            .unwrap_or_else(|err| panic!("reading the browser log: {err}"));
        log.as_array()
            .into_iter()
            .flatten()
            .map(|entry| LogEntry {
                level: entry["level"].as_str().unwrap_or_default().to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// A Chrome DevTools Protocol command, e.g. `Emulation.setDeviceMetricsOverride`.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command("goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
            .unwrap_or_else(|err| panic!("{cmd}: {err}"))
    }

    /// Makes the page's viewport `width` x `height` CSS pixels at scale 1, as a phone's when
    /// `mobile`; waits until the page sees it.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        let metrics = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
        });
        self.cdp("Emulation.setDeviceMetricsOverride", metrics)
            .await;
        self.wait_until(
            &format!("a {width}x{height} viewport"),
            Duration::from_secs(5),
            &format!("return window.innerWidth === {width} && window.innerHeight === {height};"),
        )
        .await;
    }

    /// PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }

    /// PNG of the element `css` selects, wherever it is on the page.
    pub async fn screenshot_of(&self, css: &str) -> Vec<u8> {
        let rect = self
            .eval(&format!(
                "const r = document.querySelector('{css}').getBoundingClientRect(); \
                 return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height];"
            ))
            .await;
        let clip =
            json!({ "x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3], "scale": 1 });
        self.capture(clip).await
    }

    /// PNG of the whole page, `width` wide, laid out for the current viewport (so a panel
    /// sized in `vh` keeps its size) however far below the viewport the page reaches.
    pub async fn screenshot_full_page(&self, width: u32) -> Vec<u8> {
        let height = self
            .eval("return document.documentElement.scrollHeight;")
            .await;
        let clip = json!({ "x": 0, "y": 0, "width": width, "height": height, "scale": 1 });
        self.capture(clip).await
    }

    /// PNG of the region `clip`, rendered beyond the viewport where it reaches past it.
    async fn capture(&self, clip: Value) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true, "clip": clip }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap()
    }

    /// `POST /session/{id}/{path}`, returning the response's `value`.
    async fn command(&self, path: &str, body: Value) -> std::io::Result<Value> {
        let (driver, path) = (self.driver, format!("/session/{}/{path}", self.session));
        tokio::task::spawn_blocking(move || request(driver, "POST", &path, Some(&body)))
            .await
            .map_err(std::io::Error::other)?
            .map(|mut response| response["value"].take())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Blocking and bounded, so it works while a failed test unwinds its runtime.
        let path = format!("/session/{}", self.session);
        if let Err(err) = request(self.driver, "DELETE", &path, None) {
            eprintln!("closing the WebDriver session: {err}");
        }
    }
}

/// One HTTP/1.1 request to chromedriver on loopback, bounded by [`REQUEST_LIMIT`]; its JSON
/// answer, or an error carrying the answer when the status is not 2xx.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(REQUEST_LIMIT))?;
    stream.set_write_timeout(Some(REQUEST_LIMIT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open whatever we ask: read exactly Content-Length.
    let mut response = Vec::new();
    let mut chunk = [0_u8; 8192];
    let (head_len, body_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("chromedriver closed the connection"));
        }
        response.extend_from_slice(&chunk[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| std::io::Error::other(format!("no content-length in {head}")))?;
        break (end + 4, length);
    };
    while response.len() < head_len + body_len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("chromedriver closed the connection"));
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&response[head_len..head_len + body_len]);
    let status = String::from_utf8_lossy(&response[..head_len]);
    let status = status.lines().next().unwrap_or_default();
    if !status
        .split(' ')
        .nth(1)
        .is_some_and(|code| code.starts_with('2'))
    {
        return Err(std::io::Error::other(format!(
            "{method} {path}: {status}: {body}"
        )));
    }
    serde_json::from_str(&body).map_err(|err| std::io::Error::other(format!("{err}: {body}")))
}

/// The real `stickyws cluster --port 0` (Redis, three replicas, nginx, and the supervisor
/// whose fault drills the page drives), as a newcomer runs it; stopped with SIGTERM on drop,
/// as Ctrl-C would, and killed if it does not stop in time.
pub struct DemoCluster {
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl DemoCluster {
    pub async fn start() -> DemoCluster {
        DemoCluster::start_with(&[]).await
    }

    /// The same with `extra` flags (`--redis-cluster`).
    pub async fn start_with(extra: &[&str]) -> DemoCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stickyws"));
        command
            .args(["cluster", "--port", "0"])
            .args(extra)
            .arg("--nginx-conf")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"))
            .arg("--records-log")
            .arg(dir.path().join("records.log"))
            .arg("--logs-dir")
            .arg(dir.path().join("logs"));
        let proc = Proc::spawn("cluster", &mut command, dir.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap_or_default();
            if let Some(url) = log.lines().find_map(|l| l.trim().strip_prefix("open ")) {
                break url.trim().trim_end_matches('/').to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not print its URL\n{}",
                proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        DemoCluster { proc, url, dir }
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.proc.log_tail());
        }
        let stopped = self
            .proc
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
        if stopped.is_none() {
            self.proc.kill();
        }
    }
}
