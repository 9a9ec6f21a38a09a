use super::*;

use envrig_provider_api::{PortSpec, Protocol};

#[test]
fn labels_and_ports_round_trip_and_values_are_escaped() {
    let labels = BTreeMap::from([
        ("dev.envrig.env".to_string(), "abc".to_string()),
        (
            "dev.envrig.folder".to_string(),
            "/tmp/a <b> & \"c\"".to_string(),
        ),
    ]);
    let backing = ["/l/disk.qcow2".to_string(), "/b/disk.qcow2".to_string()];
    let ports = [PortSpec {
        host_ip: "127.0.0.1".into(),
        host_port: 8080,
        guest_port: 80,
        protocol: Protocol::Tcp,
    }];
    let d = Domain {
        name: "p-1-web-1",
        kind: "qemu",
        memory_mib: 256,
        vcpus: 1,
        machine_type: "pc",
        kernel: Some("/k"),
        initrd: None,
        cmdline: Some("console=ttyS0 hostname=web".into()),
        disk: "/d/disk.qcow2",
        backing: &backing,
        console_log: "/d/console.log",
        ports: &ports,
        labels: &labels,
        network: Some(("net-1", "52:54:00:01:02:03")),
        shares: &[Share {
            kind: "virtiofs".into(),
            source: "/src/a&b".into(),
            tag: "envrig0".into(),
            read_only: true,
            daemon: Some("/usr/libexec/virtiofsd".into()),
        }],
        seed: Some("/d/seed.iso"),
        graphics: None,
        video: "cirrus",
        cpu: None,
    };
    let xml = d.to_xml().unwrap();
    assert_eq!(
        network_nic(&xml),
        Some(("net-1".to_string(), "52:54:00:01:02:03".to_string()))
    );
    assert!(xml.contains("&lt;b&gt; &amp;"), "{xml}");
    assert!(xml.contains("<source dir=\"/src/a&amp;b\"/>"), "{xml}");
    assert!(xml.contains("<access mode=\"shared\"/>"), "{xml}");
    assert!(xml.contains("<source file=\"/d/seed.iso\"/>"), "{xml}");
    assert_eq!(super::labels(&xml), labels);
    assert_eq!(super::ports(&xml), ports);
    assert!(xml.contains("<seclabel model=\"dac\" relabel=\"no\"/>"));
    // The whole backing chain, nested, ended by an empty backingStore.
    let chain = xml.find("/l/disk.qcow2").unwrap();
    let next = xml.find("/b/disk.qcow2").unwrap();
    assert!(chain < next, "{xml}");
    assert_eq!(
        xml.matches("<backingStore type=\"file\">").count(),
        2,
        "{xml}"
    );
    assert_eq!(xml.matches("<backingStore/>").count(), 1, "{xml}");
    // No `graphics`: the serial console only, no display and no video card.
    assert!(
        !xml.contains("<graphics") && !xml.contains("<video"),
        "{xml}"
    );
}

#[test]
fn a_display_listens_on_loopback_with_a_port_libvirt_picks_and_a_video_card() {
    let labels = BTreeMap::new();
    for kind in ["vnc", "spice"] {
        let d = Domain {
            name: "p-1-vm-1",
            kind: "qemu",
            memory_mib: 256,
            vcpus: 1,
            machine_type: "pc",
            kernel: None,
            initrd: None,
            cmdline: None,
            disk: "/d/disk.qcow2",
            backing: &[],
            console_log: "/d/console.log",
            ports: &[],
            labels: &labels,
            network: None,
            shares: &[],
            seed: None,
            graphics: Some(kind),
            video: "cirrus",
            cpu: None,
        };
        let xml = d.to_xml().unwrap();
        let display = format!(
            "<graphics type=\"{kind}\" autoport=\"yes\">\n      <listen type=\"address\" address=\"127.0.0.1\"/>\n    </graphics>"
        );
        assert!(xml.contains(&display), "{xml}");
        assert!(
            xml.contains("<model type=\"cirrus\" vram=\"16384\" heads=\"1\"/>"),
            "{xml}"
        );
        // The whole element: no fixed port, no other address.
        assert_eq!(xml.matches("<graphics").count(), 1, "{xml}");
        assert!(!xml.contains("0.0.0.0"), "{xml}");
        // The serial console stays.
        assert!(
            xml.contains("<target type=\"serial\" port=\"0\"/>"),
            "{xml}"
        );
    }
}

#[test]
fn the_displays_a_host_offers_are_read_from_its_domain_capabilities() {
    let caps = "<domainCapabilities><devices><disk supported='yes'><enum name='bus'><value>virtio</value></enum></disk>\
        <graphics supported='yes'><enum name='type'><value>sdl</value><value>vnc</value>\
        <value>dbus</value></enum></graphics><video supported='yes'><enum name='modelType'>\
        <value>vga</value></enum></video></devices></domainCapabilities>";
    assert_eq!(graphics_types(caps), ["sdl", "vnc", "dbus"]);
    assert!(graphics_types("<domainCapabilities/>").is_empty());
    assert_eq!(video_models(caps), ["vga"]);
}

#[test]
fn cpu_modes_are_those_the_host_supports() {
    let caps = "<domainCapabilities><cpu><mode name='host-passthrough' supported='no'/>\
        <mode name='maximum' supported='yes'><enum name='maximumMigratable'><value>on</value>\
        </enum></mode><mode name='host-model' supported='yes'><model>qemu64</model></mode>\
        </cpu></domainCapabilities>";
    assert_eq!(cpu_modes(caps), ["maximum", "host-model"]);
}

#[test]
fn a_cpu_mode_a_required_feature_and_a_video_model_are_written() {
    let labels = BTreeMap::new();
    let d = Domain {
        name: "p-1-vm-1",
        kind: "kvm",
        memory_mib: 256,
        vcpus: 1,
        machine_type: "q35",
        kernel: None,
        initrd: None,
        cmdline: None,
        disk: "/d/disk.qcow2",
        backing: &[],
        console_log: "/d/console.log",
        ports: &[],
        labels: &labels,
        network: None,
        shares: &[],
        seed: None,
        graphics: Some("vnc"),
        video: "virtio",
        cpu: Some(Cpu {
            mode: "host-model".into(),
            require: Some("vmx".into()),
        }),
    };
    let xml = d.to_xml().unwrap();
    assert!(
        xml.contains(
            "<cpu mode=\"host-model\">\n    <feature policy=\"require\" name=\"vmx\"/>\n  </cpu>"
        ),
        "{xml}"
    );
    assert!(xml.contains("<model type=\"virtio\"/>"), "{xml}");
    assert!(xml.contains("machine=\"q35\""), "{xml}");
    let plain = Domain {
        cpu: Some(Cpu {
            mode: "maximum".into(),
            require: None,
        }),
        graphics: None,
        ..d
    };
    let xml = plain.to_xml().unwrap();
    assert!(xml.contains("<cpu mode=\"maximum\"/>"), "{xml}");
    assert!(!xml.contains("<video"), "{xml}");
}

#[test]
fn snapshot_descriptions_round_trip() {
    let desc = r#"{"a":"<x> & 'y' \"z\""}"#;
    let xml = snapshot("s1", desc).unwrap();
    // libvirt hands the XML back inside a larger document.
    let back = format!(
        "<domainsnapshot>\n  <name>s1</name>\n  {}\n  <domain><description>no</description></domain>\n</domainsnapshot>",
        &xml[xml.find("<description>").unwrap()..xml.find("</domainsnapshot>").unwrap()]
    );
    assert_eq!(snapshot_description(&back).as_deref(), Some(desc));
    assert_eq!(snapshot_description("<domainsnapshot/>"), None);
}

#[test]
fn networks_are_written_and_read_back() {
    let labels = BTreeMap::from([("dev.envrig.env".to_string(), "e1".to_string())]);
    let n = Network {
        name: "shop-1234",
        bridge: "envrig1234abcd",
        labels: &labels,
        address: "198.19.7.1".parse().unwrap(),
        prefix: 24,
        dhcp: (
            "198.19.7.100".parse().unwrap(),
            "198.19.7.200".parse().unwrap(),
        ),
        domain: Some("shop.envrig.internal"),
    };
    let xml = n.to_xml().unwrap();
    assert_eq!(super::labels(&xml), labels);
    assert_eq!(
        network_domain(&xml).as_deref(),
        Some("shop.envrig.internal")
    );
    assert!(xml.contains("localOnly=\"yes\""), "{xml}");
    // The host's /etc/hosts is not the environment's DNS.
    assert!(
        xml.contains("<dnsmasq:option value=\"no-hosts\"/>"),
        "{xml}"
    );
    assert_eq!(
        network_dhcp_range(&xml),
        Some((
            "198.19.7.100".parse().unwrap(),
            "198.19.7.200".parse().unwrap()
        ))
    );
    assert_eq!(
        network_domain("<network><ip address='10.0.0.1'/></network>"),
        None
    );
    assert_eq!(
        qualified(&["db".into(), "web".into()], Some("shop.envrig.internal")),
        [
            "db",
            "web",
            "db.shop.envrig.internal",
            "web.shop.envrig.internal"
        ]
    );
    assert_eq!(qualified(&["db".into()], None), ["db"]);
    assert_eq!(network_ip(&xml), Some(("198.19.7.1".parse().unwrap(), 24)));
    assert!(!xml.contains("forward"), "isolated: {xml}");
    assert_eq!(network_bridge(&xml).as_deref(), Some("envrig1234abcd"));
    assert_eq!(
        network_bridge("<network><bridge name=\"virbr0\" stp='on'/></network>").as_deref(),
        Some("virbr0")
    );
    assert_eq!(network_bridge("<network/>"), None);
    let live = "<network><ip address='10.0.0.1' netmask='255.255.0.0'><dhcp><range start='10.0.0.9' end='10.0.0.20'/><host mac='52:54:00:AA:00:01' name='x' ip='10.0.0.10'/></dhcp></ip></network>";
    assert_eq!(network_ip(live), Some(("10.0.0.1".parse().unwrap(), 16)));
    assert_eq!(
        dhcp_hosts(live),
        vec![(
            "52:54:00:aa:00:01".to_string(),
            "10.0.0.10".parse().unwrap()
        )]
    );
    assert_eq!(
        dns_host("10.0.0.10".parse().unwrap(), &["a".into(), "b<".into()]).unwrap(),
        "<host ip=\"10.0.0.10\"><hostname>a</hostname><hostname>b&lt;</hostname></host>"
    );
}
