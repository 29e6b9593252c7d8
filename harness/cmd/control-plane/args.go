package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// ports are the loopback ports of one control plane, each chosen free by the OS.
type ports struct {
	apiserver, etcdClient, etcdPeer int
}

// plane is where one control plane's files are and where it listens.
type plane struct {
	dir   string
	ports ports
}

func (p plane) path(name string) string { return filepath.Join(p.dir, name) }

// server is the API server's URL.
func (p plane) server() string { return fmt.Sprintf("https://127.0.0.1:%d", p.ports.apiserver) }

// issuer is the service-account issuer: the API server itself, over https, so that a
// relying party finds {issuer}/.well-known/openid-configuration where the API server
// serves it (kube-apiserver's --service-account-issuer help, v1.34.4,
// pkg/kubeapiserver/options/authentication.go).
func (p plane) issuer() string { return p.server() }

func (p plane) etcdURL() string { return fmt.Sprintf("https://127.0.0.1:%d", p.ports.etcdClient) }

func (p plane) etcdPeerURL() string { return fmt.Sprintf("https://127.0.0.1:%d", p.ports.etcdPeer) }

// etcdArgs are etcd's flags: one member, client and peer traffic over TLS with client
// certificates, as kubeadm runs it (cmd/kubeadm/app/phases/etcd/local.go,
// getEtcdCommand, v1.34.4), on loopback ports.
func etcdArgs(p plane) []string {
	return []string{
		"--name=control-plane",
		"--data-dir=" + p.path("etcd-data"),
		"--listen-client-urls=" + p.etcdURL(),
		"--advertise-client-urls=" + p.etcdURL(),
		"--listen-peer-urls=" + p.etcdPeerURL(),
		"--initial-advertise-peer-urls=" + p.etcdPeerURL(),
		"--initial-cluster=control-plane=" + p.etcdPeerURL(),
		"--client-cert-auth=true",
		"--cert-file=" + p.path(etcdServerCert),
		"--key-file=" + p.path(etcdServerKey),
		"--trusted-ca-file=" + p.path(etcdCACert),
		"--peer-client-cert-auth=true",
		"--peer-cert-file=" + p.path(etcdPeerCert),
		"--peer-key-file=" + p.path(etcdPeerKey),
		"--peer-trusted-ca-file=" + p.path(etcdCACert),
		// kubeadm's for etcd 3.6: the API server's watch cache relies on progress notifications.
		"--watch-progress-notify-interval=5s",
		// The data lives as long as one test process and is deleted with it: fsync would
		// only slow the tests on a shared disk.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}
}

// apiserverArgs are kube-apiserver's flags: kubeadm's (getAPIServerCommand in
// cmd/kubeadm/app/phases/controlplane/manifests.go, v1.34.4) on loopback, with an https
// issuer that is the API server itself, its audiences, and the discovery JWKS URI.
func apiserverArgs(p plane) []string {
	return []string{
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", p.ports.apiserver),
		"--allow-privileged=true",
		"--enable-bootstrap-token-auth=true",
		"--authorization-mode=Node,RBAC",
		// Added to the default plugins (ServiceAccount, LimitRanger, ...), as kubeadm does.
		"--enable-admission-plugins=NodeRestriction",
		"--client-ca-file=" + p.path(caCert),
		"--tls-cert-file=" + p.path(apiserverCert),
		"--tls-private-key-file=" + p.path(apiserverKey),
		"--etcd-servers=" + p.etcdURL(),
		"--etcd-cafile=" + p.path(etcdCACert),
		"--etcd-certfile=" + p.path(etcdClientCert),
		"--etcd-keyfile=" + p.path(etcdClientKey),
		"--service-cluster-ip-range=10.96.0.0/12",
		"--service-account-issuer=" + p.issuer(),
		"--service-account-key-file=" + p.path(saPub),
		"--service-account-signing-key-file=" + p.path(saKey),
		"--service-account-jwks-uri=" + p.issuer() + "/openid/v1/jwks",
		// kubeadm leaves this to its default (the issuer); said here so it is one fact:
		// a token without other audiences is for the API server, the issuer.
		"--api-audiences=" + p.issuer(),
		// The "kubernetes" Service's endpoint would be 127.0.0.1, which Endpoints
		// validation refuses (loopback); nothing here routes to it.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
}

// kcmControllers are the controllers kube-controller-manager runs here:
//   - serviceaccount: the "default" ServiceAccount of every namespace;
//   - serviceaccount-token: fills kubernetes.io/service-account-token Secrets
//     (deploy/eso/apps.yaml's caller token);
//   - garbagecollector: deletes objects whose owners are gone (the Secret ESO's
//     controller writes is owned by its ExternalSecret: deleting the ExternalSecret
//     deletes it);
//   - root-ca-cert-publisher: the kube-root-ca.crt ConfigMap of every namespace, which
//     deploy/serve/deployment.yaml's projected volume reads.
//
// kubeadm runs "*" (every default controller); the others act on Pods, Nodes and
// workloads that no kubelet runs here.
var kcmControllers = []string{"serviceaccount", "serviceaccount-token", "garbagecollector", "root-ca-cert-publisher"}

// kcmArgs are kube-controller-manager's flags: kubeadm's (getControllerManagerCommand,
// same file) without the secure port (0: no health endpoint listens, readiness is read
// from what the controllers create) and without leader election (one instance).
func kcmArgs(p plane) []string {
	return []string{
		"--kubeconfig=" + p.path(kcmKubeconfig),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=" + strings.Join(kcmControllers, ","),
		"--use-service-account-credentials=true",
		"--root-ca-file=" + p.path(caCert),
		"--service-account-private-key-file=" + p.path(saKey),
		"--cluster-name=kubernetes",
		"--v=1",
	}
}
