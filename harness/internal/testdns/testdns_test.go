package testdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	table, err := Parse("cloudsmith-gen.cloudsmith-gen.svc=127.3.4.5,Other.Example.=::1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]netip.Addr{
		"cloudsmith-gen.cloudsmith-gen.svc": netip.MustParseAddr("127.3.4.5"),
		"other.example":                     netip.MustParseAddr("::1"),
	}
	if len(table) != len(want) {
		t.Fatalf("got %v, want %v", table, want)
	}
	for name, addr := range want {
		if table[name] != addr {
			t.Errorf("%s: got %v, want %v", name, table[name], addr)
		}
	}
	for _, bad := range []string{"noequals", "=127.0.0.1", "name=not-an-ip"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted it", bad)
		}
	}
}

// The resolver Install sets answers a table name with its address, and any other name
// with "no such host", as a cluster's DNS does for a Service that does not exist.
func TestInstallAnswersFromTheTable(t *testing.T) {
	saved := net.DefaultResolver
	t.Cleanup(func() { net.DefaultResolver = saved })
	Install(map[string]netip.Addr{
		"cloudsmith-gen.cloudsmith-gen.svc": netip.MustParseAddr("127.3.4.5"),
		"six.example":                       netip.MustParseAddr("::1"),
	})
	ctx := context.Background()
	addrs, err := net.DefaultResolver.LookupHost(ctx, "cloudsmith-gen.cloudsmith-gen.svc")
	if err != nil || len(addrs) != 1 || addrs[0] != "127.3.4.5" {
		t.Fatalf("got %v, %v", addrs, err)
	}
	addrs, err = net.DefaultResolver.LookupHost(ctx, "six.example")
	if err != nil || len(addrs) != 1 || addrs[0] != "::1" {
		t.Fatalf("got %v, %v", addrs, err)
	}
	_, err = net.DefaultResolver.LookupHost(ctx, "nope.cloudsmith-gen.svc")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("got %v, want not found", err)
	}
	// A dial by name goes through the same resolver (what ESO's http.Transport does).
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	Install(map[string]netip.Addr{"svc.example": netip.MustParseAddr("127.0.0.1")})
	_, port, _ := net.SplitHostPort(listener.Addr().String())
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort("svc.example", port))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}
