{{/* Names, labels and images shared by every template. */}}

{{- define "kube-tungo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-tungo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Component names are cut to leave room for the suffix within 63 characters. */}}
{{- define "kube-tungo.operator" -}}
{{- printf "%s-operator" (include "kube-tungo.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{- define "kube-tungo.webhook" -}}
{{- printf "%s-webhook" (include "kube-tungo.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "kube-tungo.webhookTLSSecret" -}}
{{- if eq .Values.webhook.certs.mode "existingSecret" -}}
{{- .Values.webhook.certs.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "kube-tungo.webhook" .) -}}
{{- end -}}
{{- end -}}

{{- define "kube-tungo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kube-tungo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kube-tungo.selector" -}}
app.kubernetes.io/name: {{ include "kube-tungo.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kube-tungo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kube-tungo.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* The operator and the webhook run as this non-root user (the image's "tungo" user). */}}
{{- define "kube-tungo.restrictedContainer" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Namespaces never sent to the webhook: the configured ones and the release's own. */}}
{{- define "kube-tungo.excludedNamespaces" -}}
{{- $all := append .Values.webhook.excludedNamespaces .Release.Namespace | uniq -}}
{{- toJson $all -}}
{{- end -}}

{{/* The controller's rules on namespaced resources (ClusterRole, or a Role per watched namespace). */}}
{{- define "kube-tungo.operatorNamespacedRules" -}}
- apiGroups: [tungo.dev]
  resources: [tungateways, chains]
  verbs: [get, list, watch, patch]
- apiGroups: [tungo.dev]
  resources: [tungateways/status, chains/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
