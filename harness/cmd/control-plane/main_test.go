package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func pool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, path))
	return p
}

func TestPKIServesLoopbackAndSeparatesEtcd(t *testing.T) {
	dir := t.TempDir()
	if _, err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	cluster := pool(t, filepath.Join(dir, caCert))
	etcd := pool(t, filepath.Join(dir, etcdCACert))
	server := readCert(t, filepath.Join(dir, apiserverCert))
	for _, name := range []string{"127.0.0.1", "localhost", "kubernetes.default.svc"} {
		if _, err := server.Verify(x509.VerifyOptions{DNSName: name, Roots: cluster}); err != nil {
			t.Errorf("API server certificate for %s: %v", name, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: cluster}); err == nil {
		t.Error("API server certificate is valid for example.com")
	}
	client := readCert(t, filepath.Join(dir, etcdClientCert))
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if _, err := client.Verify(x509.VerifyOptions{Roots: etcd, KeyUsages: usage}); err != nil {
		t.Errorf("etcd client certificate: %v", err)
	}
	// A certificate of etcd's CA is no identity on the API server.
	if _, err := client.Verify(x509.VerifyOptions{Roots: cluster, KeyUsages: usage}); err == nil {
		t.Error("etcd's client certificate verifies against the cluster CA")
	}
	data, err := os.ReadFile(filepath.Join(dir, saKey))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("sa.key: %v", err)
	}
	if key.N.BitLen() != 2048 {
		t.Errorf("sa.key is %d bits", key.N.BitLen())
	}
	data, err = os.ReadFile(filepath.Join(dir, saPub))
	if err != nil {
		t.Fatal(err)
	}
	block, _ = pem.Decode(data)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("sa.pub: %v", err)
	}
	if !key.PublicKey.Equal(pub.(*rsa.PublicKey)) {
		t.Error("sa.pub is not sa.key's public key")
	}
}

// A kubeconfig is read by client-go as kubectl reads it, and its certificate names the
// user and groups asked for, signed by the cluster CA.
func TestKubeconfigIsClientGos(t *testing.T) {
	dir := t.TempDir()
	ca, err := writePKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "node.kubeconfig")
	if err := writeKubeconfig(path, "https://127.0.0.1:6443", filepath.Join(dir, caCert), ca, "system:node:n1", []string{"system:nodes"}); err != nil {
		t.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if config.Host != "https://127.0.0.1:6443" {
		t.Errorf("server %q", config.Host)
	}
	block, _ := pem.Decode(config.CertData)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:node:n1" || strings.Join(cert.Subject.Organization, ",") != "system:nodes" {
		t.Errorf("subject %v", cert.Subject)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(t, filepath.Join(dir, caCert)), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	if err := writeKubeconfig(path, "https://x", filepath.Join(dir, caCert), ca, "", nil); err == nil {
		t.Error("a kubeconfig without a user was written")
	}
}

// The kubeconfig subcommand reads the running control plane's JSON for its server.
func TestKubeconfigCommand(t *testing.T) {
	dir := t.TempDir()
	if _, err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.kubeconfig")
	args := []string{"-dir", dir, "-user", "alice", "-group", "a", "-group", "b", "-out", out}
	if err := kubeconfigCommand(args); err == nil || !strings.Contains(err.Error(), "no running control plane") {
		t.Fatalf("without control-plane.json: %v", err)
	}
	line, _ := ready{Server: "https://127.0.0.1:1234"}.line()
	if err := os.WriteFile(filepath.Join(dir, readyFile), line, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := kubeconfigCommand(args); err != nil {
		t.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", out)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(config.CertData)
	cert, _ := x509.ParseCertificate(block.Bytes)
	if config.Host != "https://127.0.0.1:1234" || cert.Subject.CommonName != "alice" || strings.Join(cert.Subject.Organization, ",") != "a,b" {
		t.Errorf("host %s, subject %v", config.Host, cert.Subject)
	}
	if err := kubeconfigCommand([]string{"-dir", dir}); err == nil {
		t.Error("no error without -user and -out")
	}
}

func TestReadyIsOneJSONLine(t *testing.T) {
	r := ready{Server: "https://127.0.0.1:1", Issuer: "https://127.0.0.1:1", Dir: "/tmp/x\ny", PID: 7, Logs: map[string]string{"etcd": "/tmp/etcd.log"}}
	line, err := r.line()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(line), "\n") != 1 || !strings.HasSuffix(string(line), "\n") {
		t.Fatalf("not one line: %q", line)
	}
	var back map[string]any
	if err := json.Unmarshal(line, &back); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"server", "issuer", "ca_file", "admin_kubeconfig", "dir", "pid", "logs"} {
		if _, ok := back[key]; !ok {
			t.Errorf("no %q in %s", key, line)
		}
	}
}

// The flags a real cluster's control plane has, on the ports chosen.
func TestArgsAreARealClusters(t *testing.T) {
	p := plane{dir: "/d", ports: ports{apiserver: 1001, etcdClient: 1002, etcdPeer: 1003}}
	api := strings.Join(apiserverArgs(p), " ")
	for _, want := range []string{
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--secure-port=1001",
		"--bind-address=127.0.0.1",
		"--service-account-issuer=https://127.0.0.1:1001",
		"--service-account-signing-key-file=/d/sa.key",
		"--service-account-key-file=/d/sa.pub",
		"--api-audiences=https://127.0.0.1:1001",
		"--service-account-jwks-uri=https://127.0.0.1:1001/openid/v1/jwks",
		"--client-ca-file=/d/ca.crt",
		"--etcd-servers=https://127.0.0.1:1002",
	} {
		if !strings.Contains(api, want) {
			t.Errorf("kube-apiserver lacks %s", want)
		}
	}
	etcd := strings.Join(etcdArgs(p), " ")
	for _, want := range []string{"--listen-client-urls=https://127.0.0.1:1002", "--listen-peer-urls=https://127.0.0.1:1003", "--client-cert-auth=true"} {
		if !strings.Contains(etcd, want) {
			t.Errorf("etcd lacks %s", want)
		}
	}
	kcm := strings.Join(kcmArgs(p), " ")
	for _, want := range []string{"--controllers=serviceaccount,serviceaccount-token,garbagecollector,root-ca-cert-publisher", "--use-service-account-credentials=true", "--service-account-private-key-file=/d/sa.key", "--root-ca-file=/d/ca.crt"} {
		if !strings.Contains(kcm, want) {
			t.Errorf("kube-controller-manager lacks %s", want)
		}
	}
}

func TestChildEnvDropsWhatOverridesFlags(t *testing.T) {
	got := childEnv([]string{"PATH=/bin", "ETCD_DATA_DIR=/x", "KUBECONFIG=/k", "HOME=/h"})
	if strings.Join(got, " ") != "PATH=/bin HOME=/h" {
		t.Errorf("%v", got)
	}
}

func TestFindBinaries(t *testing.T) {
	dir := t.TempDir()
	if _, err := findBinaries(dir); err == nil || !strings.Contains(err.Error(), "etcd not found in "+dir) {
		t.Fatalf("empty dir: %v", err)
	}
	for _, name := range []string{"server", "kube-apiserver", "kube-controller-manager"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := findBinaries(dir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(b.etcd) != "server" {
		t.Errorf("etcd: %s", b.etcd)
	}
	// A file that is not executable is not a binary.
	if err := os.WriteFile(filepath.Join(dir, "etcd"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := findBinaries(dir); filepath.Base(b.etcd) != "server" {
		t.Errorf("etcd: %s", b.etcd)
	}
}

func TestStopWhenStdinCloses(t *testing.T) {
	r, w := io.Pipe()
	stop := stopSignal(r, nil, nil)
	if isClosed(stop) {
		t.Fatal("stopped with stdin open")
	}
	w.Close()
	select {
	case <-stop:
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop when stdin closed")
	}
}

func TestStopWhenTTLPasses(t *testing.T) {
	r, w := io.Pipe()
	defer w.Close()
	ttl := make(chan time.Time)
	stop := stopSignal(r, ttl, nil)
	ttl <- time.Now()
	select {
	case <-stop:
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop when the TTL passed")
	}
}

// stop ends every child: politely, then by force for one that ignores SIGTERM.
func TestSupervisorStopsEveryChild(t *testing.T) {
	dir := t.TempDir()
	sup := newSupervisor()
	polite, err := sup.start("polite", "/bin/sleep", []string{"60"}, filepath.Join(dir, "polite.log"))
	if err != nil {
		t.Fatal(err)
	}
	stubborn, err := sup.start("stubborn", "/bin/sh", []string{"-c", "trap '' TERM; echo ready; while :; do sleep 1; done"}, filepath.Join(dir, "stubborn.log"))
	if err != nil {
		t.Fatal(err)
	}
	// The trap is set once the shell has printed.
	for !logMentions(filepath.Join(dir, "stubborn.log"), "ready") {
		time.Sleep(10 * time.Millisecond)
	}
	sup.stop(500 * time.Millisecond)
	for _, c := range []*child{polite, stubborn} {
		if !c.exitedYet() {
			t.Errorf("%s still runs", c.name)
		}
	}
	if !strings.Contains(stubborn.failure().Error(), "signal: killed") {
		t.Errorf("stubborn: %v", stubborn.failure())
	}
}

// A child that exits is reported with its status and the end of its log.
func TestAnExitedChildIsReportedWithItsLog(t *testing.T) {
	dir := t.TempDir()
	sup := newSupervisor()
	if _, err := sup.start("failing", "/bin/sh", []string{"-c", "echo listen tcp 127.0.0.1:1: bind: address already in use; exit 3"}, filepath.Join(dir, "failing.log")); err != nil {
		t.Fatal(err)
	}
	c := <-sup.exited
	msg := c.failure().Error()
	if !strings.Contains(msg, "failing stopped (exit status 3)") || !strings.Contains(msg, "address already in use") {
		t.Errorf("%s", msg)
	}
	if !logMentions(c.log, "address already in use") {
		t.Error("logMentions")
	}
	if _, err := sup.start("missing", filepath.Join(dir, "nope"), nil, filepath.Join(dir, "nope.log")); err == nil {
		t.Error("started a missing binary")
	}
}

// With Pdeathsig, a child dies with the control plane even when the control plane gets
// SIGKILL and stops nothing: this test's helper process starts a child and is killed.
func TestChildrenDieWithTheControlPlane(t *testing.T) {
	if os.Getenv("CONTROL_PLANE_TEST_HELPER") == "1" {
		runtime.LockOSThread()
		sup := newSupervisor()
		c, err := sup.start("sleeper", "/bin/sleep", []string{"600"}, os.Getenv("CONTROL_PLANE_TEST_LOG"))
		if err != nil {
			os.Exit(2)
		}
		os.Stdout.WriteString(strconv.Itoa(c.cmd.Process.Pid) + "\n")
		time.Sleep(time.Hour)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildrenDieWithTheControlPlane$")
	cmd.Env = append(os.Environ(), "CONTROL_PLANE_TEST_HELPER=1", "CONTROL_PLANE_TEST_LOG="+filepath.Join(t.TempDir(), "sleeper.log"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	pid := strings.TrimSpace(string(buf[:n]))
	if pid == "" {
		t.Fatal("the helper printed no pid")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		state, err := os.ReadFile("/proc/" + pid + "/stat")
		// Gone, or a zombie waiting for init to reap it.
		if err != nil || strings.Contains(string(state), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %s outlived the killed control plane", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
