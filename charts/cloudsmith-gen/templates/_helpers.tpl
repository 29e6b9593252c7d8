{{/* The name every object of the release starts with. */}}
{{- define "cloudsmith-gen.fullname" -}}
{{- if contains "cloudsmith-gen" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cloudsmith-gen" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Helm's labels: on every object and pod. */}}
{{- define "cloudsmith-gen.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Labels on every object (not its pods): helm's, and the part-of label deploy/'s
kustomizations give. */}}
{{- define "cloudsmith-gen.labels" -}}
{{ include "cloudsmith-gen.helmLabels" . }}
app.kubernetes.io/part-of: cloudsmith-gen
{{- end -}}

{{/* The service's name label; with helm's labels (which carry the instance), an
object or pod carries its whole selector. */}}
{{- define "cloudsmith-gen.nameLabel" -}}
app.kubernetes.io/name: {{ include "cloudsmith-gen.fullname" . }}
{{- end -}}

{{/* The kubelet installer's name label. */}}
{{- define "cloudsmith-gen.kubeletNameLabel" -}}
app.kubernetes.io/name: {{ include "cloudsmith-gen.fullname" . }}-kubelet-provider
{{- end -}}

{{/* The service's selector. */}}
{{- define "cloudsmith-gen.selector" -}}
app.kubernetes.io/name: {{ include "cloudsmith-gen.fullname" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The kubelet installer's selector. */}}
{{- define "cloudsmith-gen.kubeletSelector" -}}
app.kubernetes.io/name: {{ include "cloudsmith-gen.fullname" . }}-kubelet-provider
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image, by digest when one is given. */}}
{{- define "cloudsmith-gen.image" -}}
{{- if .Values.image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .Values.image.digest) -}}
{{- fail (printf "image.digest %q is not sha256:<64 hex digits>" .Values.image.digest) -}}
{{- end -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The name of the first generator in serve.generators: a consumer's default. */}}
{{- define "cloudsmith-gen.firstGenerator" -}}
{{- $first := index (regexSplit "(?m)^---\\s*$" .Values.serve.generators -1) 0 | fromYaml -}}
{{- required "serve.generators: the first document needs metadata.name" (dig "metadata" "name" "" $first) -}}
{{- end -}}
