//! MQTT 5.0 end to end with paho-mqtt: CONNACK success, telemetry a Proton consumer receives (with the
//! PUBLISH's content type property), and reason code 0x86 for a wrong password.

use std::time::Duration;

use super::platform::Platform;

/// Connects as `sensor1@t1` with the password in argv[2] over MQTT 5.0, prints the CONNACK's reason
/// code and, when connected, publishes QoS 1 telemetry with a content type property.
const PAHO_V5: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, password = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-v5", protocol=mqtt.MQTTv5)
c.username_pw_set("sensor1@t1", password)
connected, result = threading.Event(), {}
def on_connect(cl, u, flags, rc, props=None):
    result["rc"] = rc
    connected.set()
c.on_connect = on_connect
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
if not connected.wait(10):
    print("no connack", flush=True)
    sys.exit(1)
rc = result["rc"]
print("connack", rc.value, rc.getName(), flush=True)
if rc.is_failure:
    c.loop_stop()
    sys.exit(0)
props = Properties(PacketTypes.PUBLISH)
props.ContentType = "text/plain"
r = c.publish("telemetry", b"hello from MQTT 5", qos=1, properties=props)
r.wait_for_publish(5)
print("published", r.is_published(), flush=True)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_v5_connects_and_its_telemetry_reaches_a_proton_consumer() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let device = p.paho(PAHO_V5, &["hunter2"]);
    let connack = device.line(Duration::from_secs(10)).expect("paho connects");
    assert_eq!(connack, "connack 0 Success");
    let published = device
        .line(Duration::from_secs(10))
        .expect("paho publishes");
    assert_eq!(published, "published True", "the PUBACK came");
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "hello from MQTT 5");
    assert_eq!(m["content_type"], "text/plain", "{m}");
    assert_eq!(m["properties"]["device_id"], "d1");
    assert_eq!(m["properties"]["qos"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_v5_with_a_wrong_password_gets_reason_code_0x86() {
    let p = Platform::start().await;
    let device = p.paho(PAHO_V5, &["wrong"]);
    let connack = device
        .line(Duration::from_secs(10))
        .expect("paho gets a CONNACK");
    assert_eq!(connack, "connack 134 Bad user name or password");
}
