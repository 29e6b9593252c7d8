// Package testdns answers this process's DNS lookups for a few names, as a cluster's DNS
// answers for a Service: `cloudsmith-gen.cloudsmith-gen.svc` → the loopback address a
// test's `serve` listens on. ESO's Webhook client dials with Go's default resolver
// (v0.20.4 pkg/common/webhook/webhook.go, GetHTTPClient: an http.Transport with no
// DialContext), so replacing net.DefaultResolver reaches it without touching ESO's code.
// Names not in the table are NXDOMAIN, as a cluster DNS answers for a Service that does
// not exist; /etc/hosts is still read first (Go's resolver order), so localhost works.
package testdns

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// EnvVar holds the table for processes whose flags are not ours (ESO's controller):
// `NAME=IP[,NAME=IP...]`.
const EnvVar = "HARNESS_RESOLVE"

// Parse reads `NAME=IP` pairs (comma-separated) into a table.
func Parse(spec string) (map[string]netip.Addr, error) {
	table := map[string]netip.Addr{}
	for _, pair := range strings.Split(spec, ",") {
		if pair == "" {
			continue
		}
		name, ip, ok := strings.Cut(pair, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("%q is not NAME=IP", pair)
		}
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", pair, err)
		}
		table[strings.ToLower(strings.TrimSuffix(name, "."))] = addr
	}
	return table, nil
}

// InstallFromEnv installs the table in EnvVar, if set.
func InstallFromEnv() error {
	spec, ok := os.LookupEnv(EnvVar)
	if !ok {
		return nil
	}
	table, err := Parse(spec)
	if err != nil {
		return fmt.Errorf("%s: %w", EnvVar, err)
	}
	Install(table)
	return nil
}

// Install makes net.DefaultResolver answer from table (over an in-process pipe: no
// socket, nothing another process can reach).
func Install(table map[string]netip.Addr) {
	net.DefaultResolver = &net.Resolver{
		PreferGo: true,
		Dial: func(context.Context, string, string) (net.Conn, error) {
			client, server := net.Pipe()
			go serve(server, table)
			return client, nil
		},
	}
}

// serve answers DNS over a stream (a 2-byte length before each message: what Go's
// resolver sends on a connection that is not a PacketConn).
func serve(conn net.Conn, table map[string]netip.Addr) {
	defer conn.Close()
	for {
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return
		}
		query := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(conn, query); err != nil {
			return
		}
		answer, err := respond(query, table)
		if err != nil {
			return
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(answer)))
		if _, err := conn.Write(append(out, answer...)); err != nil {
			return
		}
	}
}

func respond(query []byte, table map[string]netip.Addr) ([]byte, error) {
	var parser dnsmessage.Parser
	header, err := parser.Start(query)
	if err != nil {
		return nil, err
	}
	question, err := parser.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(strings.TrimSuffix(question.Name.String(), "."))
	addr, known := table[name]
	reply := dnsmessage.Header{ID: header.ID, Response: true, Authoritative: true, RecursionDesired: header.RecursionDesired, RecursionAvailable: true}
	if !known {
		reply.RCode = dnsmessage.RCodeNameError
	}
	builder := dnsmessage.NewBuilder(nil, reply)
	builder.EnableCompression()
	if err := builder.StartQuestions(); err != nil {
		return nil, err
	}
	if err := builder.Question(question); err != nil {
		return nil, err
	}
	if err := builder.StartAnswers(); err != nil {
		return nil, err
	}
	// A known name has only the address it was given: an AAAA question for an IPv4
	// name gets an empty answer (no error), as a real server gives.
	if known {
		head := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 5}
		switch {
		case question.Type == dnsmessage.TypeA && addr.Is4():
			if err := builder.AResource(head, dnsmessage.AResource{A: addr.As4()}); err != nil {
				return nil, err
			}
		case question.Type == dnsmessage.TypeAAAA && addr.Is6():
			if err := builder.AAAAResource(head, dnsmessage.AAAAResource{AAAA: addr.As16()}); err != nil {
				return nil, err
			}
		}
	}
	return builder.Finish()
}
