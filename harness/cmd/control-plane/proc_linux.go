package main

import "syscall"

// childAttr makes the kernel send SIGKILL to a child when the thread that started it
// ends (prctl PR_SET_PDEATHSIG): a control plane that dies, even by SIGKILL, takes
// etcd, kube-apiserver and kube-controller-manager with it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
