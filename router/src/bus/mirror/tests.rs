use super::*;

/// The hub's side, written down: the routes in force and the instances with a stand-in.
#[derive(Default)]
struct Table {
    routes: HashMap<(RouteKind, String), String>,
    instances: HashSet<String>,
    dropped: Vec<String>,
}

impl RouteTable for Table {
    fn subscribe(&mut self, kind: RouteKind, _: &TenantId, id: &DeviceId, instance: &str) -> bool {
        self.routes
            .insert((kind, id.as_str().to_owned()), instance.to_owned());
        self.instances.insert(instance.to_owned());
        true
    }

    fn unsubscribe(&mut self, kind: RouteKind, _: &TenantId, id: &DeviceId, instance: &str) {
        let key = (kind, id.as_str().to_owned());
        if self.routes.get(&key).map(String::as_str) == Some(instance) {
            self.routes.remove(&key);
        }
    }

    fn set_last_gateway(&mut self, _: &TenantId, _: &DeviceId, _: &DeviceId) {}

    fn drop_instance(&mut self, instance: &str) {
        self.instances.remove(instance);
        self.dropped.push(instance.to_owned());
    }
}

fn key(id: &str) -> String {
    routes::key(RouteKind::Device, "t1", id)
}

#[test]
fn routes_deleted_while_no_watch_ran_are_undone_and_their_instance_goes() {
    let (mut mirror, mut table) = (Mirror::default(), Table::default());
    mirror.apply(&mut table, &key("d1"), Some("mqtt-a"));
    mirror.apply(&mut table, &key("d2"), Some("mqtt-a"));
    mirror.apply(&mut table, &key("d3"), Some("mqtt-b"));
    assert_eq!(table.instances.len(), 2);
    // The watch failed; meanwhile mqtt-a went and its routes expired. The new watch starts on a bucket
    // that holds only d3, and replays it.
    let present: HashSet<String> = [key("d3")].into_iter().collect();
    mirror.keep_only(&mut table, &present);
    mirror.apply(&mut table, &key("d3"), Some("mqtt-b"));
    assert_eq!(
        table
            .routes
            .keys()
            .map(|(_, d)| d.as_str())
            .collect::<Vec<_>>(),
        ["d3"]
    );
    assert_eq!(table.dropped, ["mqtt-a"], "mqtt-a's stand-in goes");
    assert!(table.instances.contains("mqtt-b"));
    // mqtt-b's count survived the restart: its last route going drops it too.
    mirror.apply(&mut table, &key("d3"), None);
    assert_eq!(table.dropped, ["mqtt-a", "mqtt-b"]);
    assert!(table.routes.is_empty());
    assert!(mirror.is_empty());
}

#[test]
fn a_replayed_route_changes_nothing_and_a_moved_one_moves() {
    let (mut mirror, mut table) = (Mirror::default(), Table::default());
    mirror.apply(&mut table, &key("d1"), Some("mqtt-a"));
    // A new watch replays d1 as it is, then d1 moves to mqtt-b.
    mirror.apply(&mut table, &key("d1"), Some("mqtt-a"));
    assert!(table.dropped.is_empty(), "a replay is not a move");
    mirror.apply(&mut table, &key("d1"), Some("mqtt-b"));
    assert_eq!(table.dropped, ["mqtt-a"]);
    assert_eq!(
        table.routes.get(&(RouteKind::Device, "d1".to_owned())),
        Some(&"mqtt-b".to_owned())
    );
}

#[test]
fn keys_that_are_not_routes_are_ignored() {
    let (mut mirror, mut table) = (Mirror::default(), Table::default());
    mirror.apply(&mut table, "not-a-route", Some("mqtt-a"));
    assert!(mirror.is_empty());
    assert!(table.instances.is_empty());
}
