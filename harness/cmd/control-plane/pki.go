package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The files of one control plane's public key infrastructure, all under one directory.
// The names follow kubeadm's layout (cmd/kubeadm/app/constants/constants.go, v1.34.4:
// CACertName "ca.crt", ServiceAccountPrivateKeyName "sa.key", ...), flattened.
const (
	caCert           = "ca.crt"
	caKey            = "ca.key"
	apiserverCert    = "apiserver.crt"
	apiserverKey     = "apiserver.key"
	saKey            = "sa.key"
	saPub            = "sa.pub"
	etcdCACert       = "etcd-ca.crt"
	etcdCAKey        = "etcd-ca.key"
	etcdServerCert   = "etcd-server.crt"
	etcdServerKey    = "etcd-server.key"
	etcdPeerCert     = "etcd-peer.crt"
	etcdPeerKey      = "etcd-peer.key"
	etcdClientCert   = "apiserver-etcd-client.crt"
	etcdClientKey    = "apiserver-etcd-client.key"
	adminKubeconfig  = "admin.kubeconfig"
	kcmKubeconfig    = "controller-manager.kubeconfig"
	readyFile        = "control-plane.json"
	certificateValid = 7 * 24 * time.Hour
)

// authority is a CA that can sign certificates.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// newAuthority makes a self-signed CA named cn and writes it as certFile/keyFile in dir.
func newAuthority(dir, cn, certFile, keyFile string) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(certificateValid),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := writeCertAndKey(dir, certFile, keyFile, der, key); err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

// loadAuthority reads a CA written by newAuthority.
func loadAuthority(certPath, keyPath string) (*authority, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM PKCS#8 private key", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	return &authority{cert: cert, key: key}, nil
}

// leaf describes one certificate to issue.
type leaf struct {
	commonName   string
	organization []string
	ips          []net.IP
	dnsNames     []string
	server       bool
	client       bool
}

// issue signs a fresh ECDSA P-256 key for l and returns the certificate and key as PEM.
func (ca *authority) issue(l leaf) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	template := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: l.commonName, Organization: l.organization},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(certificateValid),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  l.ips,
		DNSNames:     l.dnsNames,
	}
	if l.server {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// issueFiles is issue, written as dir/certFile and dir/keyFile.
func (ca *authority) issueFiles(dir, certFile, keyFile string, l leaf) error {
	certPEM, keyPEM, err := ca.issue(l)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600)
}

func writeCertAndKey(dir, certFile, keyFile string, der []byte, key crypto.Signer) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// loopback is every address the certificates are for: the control plane listens on
// 127.0.0.1 only.
var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

// apiserverNames are the names a client of the API server may use: loopback, and the
// in-cluster names kubeadm puts in the serving certificate (certs.go, GetAPIServerAltNames).
var apiserverNames = []string{
	"localhost",
	"kubernetes",
	"kubernetes.default",
	"kubernetes.default.svc",
	"kubernetes.default.svc.cluster.local",
}

// writePKI creates every certificate and key the three components use, in dir.
func writePKI(dir string) (*authority, error) {
	ca, err := newAuthority(dir, "kubernetes", caCert, caKey)
	if err != nil {
		return nil, err
	}
	if err := ca.issueFiles(dir, apiserverCert, apiserverKey, leaf{
		commonName: "kube-apiserver",
		ips:        append([]net.IP{net.IPv4(10, 96, 0, 1)}, loopback...),
		dnsNames:   apiserverNames,
		server:     true,
	}); err != nil {
		return nil, err
	}
	// etcd has a CA of its own, as in kubeadm: a certificate it signs is no identity
	// on the API server.
	etcdCA, err := newAuthority(dir, "etcd-ca", etcdCACert, etcdCAKey)
	if err != nil {
		return nil, err
	}
	for _, c := range []struct {
		cert, key string
		l         leaf
	}{
		{etcdServerCert, etcdServerKey, leaf{commonName: "etcd-server", ips: loopback, dnsNames: []string{"localhost"}, server: true, client: true}},
		{etcdPeerCert, etcdPeerKey, leaf{commonName: "etcd-peer", ips: loopback, dnsNames: []string{"localhost"}, server: true, client: true}},
		{etcdClientCert, etcdClientKey, leaf{commonName: "kube-apiserver-etcd-client", client: true}},
	} {
		if err := etcdCA.issueFiles(dir, c.cert, c.key, c.l); err != nil {
			return nil, err
		}
	}
	if err := writeServiceAccountKey(dir); err != nil {
		return nil, err
	}
	return ca, nil
}

// writeServiceAccountKey writes the service-account signing key (RSA 2048, what kubeadm
// generates: pkiutil.NewPrivateKey with the default x509.RSA) and its public key.
func writeServiceAccountKey(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, saKey), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, saPub), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// writeKubeconfig writes a kubeconfig for server that trusts caPath and authenticates
// with a client certificate for user in groups, signed by ca.
func writeKubeconfig(path, server, caPath string, ca *authority, user string, groups []string) error {
	if user == "" {
		return errors.New("a kubeconfig needs a user name")
	}
	certPEM, keyPEM, err := ca.issue(leaf{commonName: user, organization: groups, client: true})
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return err
	}
	return os.WriteFile(path, kubeconfig(server, caPEM, certPEM, keyPEM, user), 0o600)
}

// kubeconfig renders a one-cluster, one-user kubeconfig (client-go's
// tools/clientcmd/api/v1 Config) with the certificates inline. JSON is YAML, and needs
// no YAML library.
func kubeconfig(server string, caPEM, certPEM, keyPEM []byte, user string) []byte {
	return []byte(fmt.Sprintf(`{
  "apiVersion": "v1",
  "kind": "Config",
  "clusters": [{"name": "control-plane", "cluster": {"server": %q, "certificate-authority-data": %q}}],
  "users": [{"name": %q, "user": {"client-certificate-data": %q, "client-key-data": %q}}],
  "contexts": [{"name": "control-plane", "context": {"cluster": "control-plane", "user": %q}}],
  "current-context": "control-plane"
}
`, server, b64(caPEM), user, b64(certPEM), b64(keyPEM), user))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
