//! The MQTT peers, started by the harness on loopback: Mosquitto (password file made with
//! `mosquitto_passwd`) and ActiveMQ Classic (MQTT transport, KahaDB).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tempfile::TempDir;

use super::procs::{self, Server};
use super::wire::{self, Login};
use crate::pin;

/// How Mosquitto is configured for a scenario.
#[derive(Debug, Clone)]
pub struct MosquittoConfig {
    pub port: u16,
    pub password_file: PathBuf,
    /// `persistence true` (QoS 1 messages of durable sessions saved to `persistence_location`).
    pub persistence: Option<PathBuf>,
    pub log_file: PathBuf,
}

/// The `mosquitto.conf` the harness writes. Queue limits are raised so that the broker does not drop
/// QoS 0 messages for a subscriber that is momentarily behind at the rates tested (Ferry's consumer gets
/// ample credit likewise); logging is errors and warnings only, like Ferry's default `info` level which
/// logs nothing per connection or message.
pub fn mosquitto_conf(c: &MosquittoConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "per_listener_settings false");
    let _ = writeln!(out, "listener {} 127.0.0.1", c.port);
    let _ = writeln!(out, "allow_anonymous false");
    let _ = writeln!(out, "password_file {}", c.password_file.display());
    let _ = writeln!(out, "max_connections -1");
    let _ = writeln!(out, "max_inflight_messages 1000");
    let _ = writeln!(out, "max_queued_messages 1000000");
    let _ = writeln!(out, "log_dest file {}", c.log_file.display());
    let _ = writeln!(out, "log_type error");
    let _ = writeln!(out, "log_type warning");
    let _ = writeln!(out, "connection_messages false");
    match &c.persistence {
        Some(dir) => {
            let _ = writeln!(out, "persistence true");
            let _ = writeln!(out, "persistence_location {}/", dir.display());
        }
        None => {
            let _ = writeln!(out, "persistence false");
        }
    }
    out
}

/// `user:password` lines, which `mosquitto_passwd -U` hashes in place.
pub fn plain_password_file(users: &[(String, String)]) -> String {
    users.iter().fold(String::new(), |mut out, (u, p)| {
        let _ = writeln!(out, "{u}:{p}");
        out
    })
}

/// A running Mosquitto.
pub struct Mosquitto {
    pub server: Server,
    pub addr: SocketAddr,
    pub version: String,
    _dir: TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` pinned to `cpus` on a free loopback port, with `users` in its password file.
    pub async fn start(
        cpus: Option<&str>,
        users: &[(String, String)],
        persistence: bool,
    ) -> anyhow::Result<Self> {
        let bin = procs::require("mosquitto", "mosquitto")?;
        let passwd = procs::require("mosquitto_passwd", "mosquitto-clients")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-mosquitto-")
            .tempdir()?;
        let password_file = dir.path().join("passwords");
        std::fs::write(&password_file, plain_password_file(users))?;
        let hashed = Command::new(&passwd)
            .arg("-U")
            .arg(&password_file)
            .status()
            .context("running mosquitto_passwd -U")?;
        ensure!(hashed.success(), "mosquitto_passwd -U failed: {hashed}");
        let addr = procs::free_port()?;
        let persistence = if persistence {
            let p = dir.path().join("data");
            std::fs::create_dir_all(&p)?;
            Some(p)
        } else {
            None
        };
        let conf = MosquittoConfig {
            port: addr.port(),
            password_file,
            persistence,
            log_file: dir.path().join("mosquitto.log"),
        };
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, mosquitto_conf(&conf))?;
        let mut cmd = pin::command(cpus, &bin);
        cmd.arg("-c").arg(&conf_path);
        let mut server = Server::spawn("mosquitto", cmd, &dir.path().join("stdout.log"))?;
        server.wait_tcp(addr, Duration::from_secs(20)).await?;
        Ok(Self {
            server,
            addr,
            version: version(&bin),
            _dir: dir,
        })
    }
}

/// `mosquitto 2.0.11`-like from `mosquitto -h`.
fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .find(|l| l.contains("version"))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "mosquitto (version unknown)".to_owned())
}

/// The one user ActiveMQ is configured with (every publisher and the subscriber log in as it).
pub const ACTIVEMQ_USER: &str = "bench";
pub const ACTIVEMQ_PASSWORD: &str = "bench-secret";
const ACTIVEMQ_HOME: &str = "/usr/share/activemq";

/// The `activemq.xml` the harness writes: one MQTT transport connector on loopback, KahaDB (the
/// default persistence, journal synced on every write), a password for clients, no JMX.
pub fn activemq_xml(port: u16, data: &Path) -> String {
    format!(
        r#"<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="ferry-bench"
          persistent="true" dataDirectory="{data}">
    <persistenceAdapter>
      <kahaDB directory="{data}/kahadb"/>
    </persistenceAdapter>
    <plugins>
      <simpleAuthenticationPlugin>
        <users>
          <authenticationUser username="{user}" password="{password}" groups="users"/>
        </users>
      </simpleAuthenticationPlugin>
    </plugins>
    <transportConnectors>
      <transportConnector name="mqtt" uri="mqtt://127.0.0.1:{port}?maximumConnections=100000"/>
    </transportConnectors>
  </broker>
</beans>
"#,
        data = data.display(),
        user = ACTIVEMQ_USER,
        password = ACTIVEMQ_PASSWORD,
    )
}

/// A running ActiveMQ Classic (Debian's `activemq`), the JVM started directly (no wrapper shell, so the
/// pid is the broker's).
pub struct ActiveMq {
    pub server: Server,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl ActiveMq {
    pub async fn start(cpus: Option<&str>) -> anyhow::Result<Self> {
        let home = Path::new(ACTIVEMQ_HOME);
        let jar = home.join("bin/activemq.jar");
        ensure!(
            jar.is_file(),
            "{} not found: install ActiveMQ with `apt-get install -y activemq`",
            jar.display()
        );
        let java = procs::require("java", "default-jre-headless")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-activemq-")
            .tempdir()?;
        let conf = dir.path().join("conf");
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        for d in [&conf, &data, &tmp] {
            std::fs::create_dir_all(d)?;
        }
        let addr = procs::free_port()?;
        std::fs::write(conf.join("activemq.xml"), activemq_xml(addr.port(), &data))?;
        // Log4j 1.2 (what Debian's build uses): INFO to stdout, which goes to the log file.
        std::fs::write(
            conf.join("log4j.properties"),
            "log4j.rootLogger=WARN, out\nlog4j.appender.out=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.out.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.out.layout.ConversionPattern=%d %-5p %c - %m%n\n",
        )?;
        // Debian's activemq package leaves the MQTT codec (fusesource mqtt-client, from
        // libmqtt-client-java) and hawtdispatch off the broker's class path; the broker also loads
        // jars from `activemq.base/lib`, so they are linked there.
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&lib)?;
        for jar in [
            "mqtt-client.jar",
            "hawtdispatch.jar",
            "hawtdispatch-transport.jar",
        ] {
            let target = Path::new("/usr/share/java").join(jar);
            ensure!(
                target.is_file(),
                "{} not found: ActiveMQ's MQTT transport needs it (`apt-get install -y libmqtt-client-java`)",
                target.display()
            );
            std::os::unix::fs::symlink(&target, lib.join(jar))?;
        }
        let mut cmd = pin::command(cpus, &java);
        cmd.args(["-Xms512M", "-Xmx512M", "-Djava.awt.headless=true"])
            .arg(format!("-Djava.io.tmpdir={}", tmp.display()));
        for open in [
            "java.base/java.security",
            "java.base/java.net",
            "java.base/java.lang",
            "java.base/java.util",
            "java.naming/javax.naming.spi",
            "java.rmi/sun.rmi.transport.tcp",
            "java.base/java.util.concurrent",
            "java.base/java.util.concurrent.atomic",
        ] {
            cmd.arg("--add-opens").arg(format!("{open}=ALL-UNNAMED"));
        }
        cmd.arg("--add-reads=java.xml=java.logging")
            .arg(format!("-Dactivemq.classpath={}/", conf.display()))
            .arg(format!("-Dactivemq.home={}", home.display()))
            .arg(format!("-Dactivemq.base={}", dir.path().display()))
            .arg(format!("-Dactivemq.conf={}", conf.display()))
            .arg(format!("-Dactivemq.data={}", data.display()))
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                conf.join("log4j.properties").display()
            ))
            .arg("-jar")
            .arg(&jar)
            .arg("start")
            .arg(format!(
                "xbean:file:{}",
                conf.join("activemq.xml").display()
            ));
        let mut server = Server::spawn("activemq", cmd, &dir.path().join("stdout.log"))?;
        server.wait_tcp(addr, Duration::from_secs(120)).await?;
        // The listener is up before the broker answers: wait for a CONNACK.
        let login = Login {
            client_id: "ready-probe".into(),
            username: ACTIVEMQ_USER.into(),
            password: ACTIVEMQ_PASSWORD.into(),
            keep_alive_secs: 60,
            clean_session: true,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            server.check_alive()?;
            let mut rest = bytes::BytesMut::new();
            match wire::connect(addr, None, &login, &mut rest).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    anyhow::bail!(
                        "ActiveMQ did not answer CONNECT: {e:#}; its log:\n{}",
                        server.log_tail(30)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(Self {
            server,
            addr,
            _dir: dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_config_names_listener_passwords_and_persistence() {
        let c = MosquittoConfig {
            port: 41883,
            password_file: "/tmp/x/passwords".into(),
            persistence: Some("/tmp/x/data".into()),
            log_file: "/tmp/x/m.log".into(),
        };
        let text = mosquitto_conf(&c);
        assert!(text.contains("listener 41883 127.0.0.1\n"));
        assert!(text.contains("allow_anonymous false\n"));
        assert!(text.contains("password_file /tmp/x/passwords\n"));
        assert!(text.contains("persistence true\npersistence_location /tmp/x/data/\n"));
        let volatile = mosquitto_conf(&MosquittoConfig {
            persistence: None,
            ..c
        });
        assert!(volatile.contains("persistence false\n"));
        assert!(!volatile.contains("persistence_location"));
    }

    #[test]
    fn activemq_config_has_kahadb_and_the_mqtt_connector() {
        let xml = activemq_xml(41883, Path::new("/tmp/amq/data"));
        assert!(xml.contains(r#"uri="mqtt://127.0.0.1:41883?maximumConnections=100000""#));
        assert!(xml.contains(r#"<kahaDB directory="/tmp/amq/data/kahadb"/>"#));
        assert!(xml.contains(r#"persistent="true""#));
        assert!(xml.contains(&format!(r#"username="{ACTIVEMQ_USER}""#)));
    }

    #[test]
    fn plain_password_lines() {
        let users = vec![
            ("d0".to_owned(), "p0".to_owned()),
            ("app".into(), "s".into()),
        ];
        assert_eq!(plain_password_file(&users), "d0:p0\napp:s\n");
    }
}
