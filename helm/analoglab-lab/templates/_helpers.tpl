{{/* The prefix of every resource's name: fullnameOverride, else the release's name. */}}
{{- define "analoglab-lab.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource of the site carries. */}}
{{- define "analoglab-lab.labels" -}}
app.kubernetes.io/name: analoglab-lab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: analoglab
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
analoglab.io/lab: {{ .Values.lab | quote }}
{{- end -}}

{{/* The agent's pod labels (its selector). */}}
{{- define "analoglab-lab.agentSelector" -}}
app.kubernetes.io/name: analoglab-lab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* The namespace the executor's Jobs run in (the release's unless executor.namespace). */}}
{{- define "analoglab-lab.jobNamespace" -}}
{{- default .Release.Namespace .Values.executor.namespace -}}
{{- end -}}

{{/* The frontier weights' claim: the operator's, or the one this chart creates. */}}
{{- define "analoglab-lab.weightsClaim" -}}
{{- if .Values.weights.existingClaim -}}
{{- .Values.weights.existingClaim -}}
{{- else -}}
{{- printf "%s-weights" (include "analoglab-lab.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The name of the ServiceAccount the agent runs as. */}}
{{- define "analoglab-lab.serviceAccount" -}}
{{- printf "%s-agent" (include "analoglab-lab.fullname" .) -}}
{{- end -}}

{{/* An image reference from {repository, tag}; a tag is required (never latest). */}}
{{- define "analoglab-lab.image" -}}
{{- if or (not .tag) (eq (toString .tag) "latest") -}}
{{- fail (printf "image %s needs a pinned tag (not latest)" .repository) -}}
{{- end -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* A map as a TOML inline table (values written as JSON scalars, which TOML reads alike). */}}
{{- define "analoglab-lab.tomlTable" -}}
{ {{- $first := true -}}{{- range $k, $v := . -}}{{- if not $first }}, {{ end -}}{{- $first = false -}}{{ $k | toJson }} = {{ $v | toJson }}{{- end -}} }
{{- end -}}
