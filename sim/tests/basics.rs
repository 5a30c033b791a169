//! The DHT's behaviour on small simulated networks.

use std::time::Duration;

use macula_dht_sim::{Network, SimConfig};

#[test]
fn advertised_is_found_from_every_node_and_withdrawn_from_none() {
    let mut net = Network::new(SimConfig::default());
    let nodes = net.grow(50, Duration::from_millis(200));
    net.run_for(Duration::from_secs(5));
    let publisher = nodes[7];
    net.advertise(publisher, "svc.calc", "https://calc:1", 600);
    net.run_for(Duration::from_secs(5));
    for &i in &nodes {
        let found = net.discover(i, "svc.calc", 1).expect("lookup ended");
        assert_eq!(found.len(), 1, "node {i}");
        assert_eq!(found[0].endpoint.as_deref(), Some("https://calc:1"));
    }
    net.withdraw(publisher, "svc.calc");
    net.run_for(Duration::from_secs(5));
    for &i in &nodes {
        let found = net.discover(i, "svc.calc", 1000).expect("lookup ended");
        assert!(found.is_empty(), "node {i} still finds {found:?}");
    }
    println!("{:?}", net.stats());
}
