{{/* The prefix of every resource's name: fullnameOverride, else the release's name. */}}
{{- define "analoglab-hub.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of one component's resources: <fullname>-<component>. */}}
{{- define "analoglab-hub.name" -}}
{{- printf "%s-%s" (include "analoglab-hub.fullname" .root) .component -}}
{{- end -}}

{{/* Labels every resource carries; call with (dict "root" $ "component" "queue"). */}}
{{- define "analoglab-hub.labels" -}}
app.kubernetes.io/name: analoglab
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: analoglab
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The labels a component's pods are selected by (never change across upgrades). */}}
{{- define "analoglab-hub.selectorLabels" -}}
app.kubernetes.io/name: analoglab
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from {repository, tag}; a tag is required (never latest). */}}
{{- define "analoglab-hub.image" -}}
{{- if or (not .tag) (eq (toString .tag) "latest") -}}
{{- fail (printf "image %s needs a pinned tag (not latest)" .repository) -}}
{{- end -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* The name of the Secret the chart generates (or the operator's own). */}}
{{- define "analoglab-hub.secretName" -}}
{{- default (printf "%s-secrets" (include "analoglab-hub.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The Secret holding the databases' URLs: ours, or the operator's for an external database. */}}
{{- define "analoglab-hub.databaseSecretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "analoglab-hub.secretName" . -}}
{{- else -}}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The pod securityContext every component shares: non-root, RuntimeDefault seccomp. */}}
{{- define "analoglab-hub.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A container's securityContext: no privileges, read-only root filesystem. */}}
{{- define "analoglab-hub.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment of every analoglab process: offline libraries, writable places on emptyDirs. */}}
{{- define "analoglab-hub.baseEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: ANALOGLAB_HOME
  value: /tmp/analoglab
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end -}}

{{/* The environment JupyterHub gives a service: call with (dict "root" $ "service" "queue" "key" "queue-api-token"). */}}
{{- define "analoglab-hub.hubServiceEnv" -}}
- name: JUPYTERHUB_SERVICE_NAME
  value: {{ .service }}
- name: JUPYTERHUB_API_URL
  value: {{ .root.Values.hub.apiUrl | quote }}
- name: JUPYTERHUB_BASE_URL
  value: {{ .root.Values.hub.baseUrl | quote }}
- name: JUPYTERHUB_SERVICE_PREFIX
  value: {{ printf "%sservices/%s/" .root.Values.hub.baseUrl .service | quote }}
- name: JUPYTERHUB_CLIENT_ID
  value: {{ printf "service-%s" .service }}
- name: JUPYTERHUB_OAUTH_CALLBACK_URL
  value: {{ printf "%sservices/%s/oauth_callback" .root.Values.hub.baseUrl .service | quote }}
- name: JUPYTERHUB_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "analoglab-hub.secretName" .root }}
      key: {{ .key }}
{{- end -}}

{{/* Scratch volumes every pod mounts (the root filesystem is read-only). */}}
{{- define "analoglab-hub.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{/* Egress to the cluster's DNS (UDP and TCP 53), which every component needs to resolve names. */}}
{{- define "analoglab-hub.dnsEgress" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* A NetworkPolicy peer selecting one of our components' pods. */}}
{{- define "analoglab-hub.peer" -}}
- podSelector:
    matchLabels:
      {{- include "analoglab-hub.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* A NetworkPolicy peer selecting JupyterHub's pods of one kind (hub, proxy, singleuser). */}}
{{- define "analoglab-hub.jupyterhubPeer" -}}
- podSelector:
    matchLabels:
      {{- toYaml (index .root.Values.networkPolicy.jupyterhub .kind) | nindent 6 }}
{{- end -}}

{{/* Egress to the databases: our PostgreSQL's pods, else the external database's peers. */}}
{{- define "analoglab-hub.databaseEgress" -}}
{{- if .Values.postgresql.enabled }}
- to:
    {{- include "analoglab-hub.peer" (dict "root" . "component" "postgresql") | nindent 4 }}
  ports:
    - protocol: TCP
      port: 5432
{{- else }}
- ports:
    - protocol: TCP
      port: {{ .Values.externalDatabase.port }}
  {{- with .Values.externalDatabase.networkPolicyPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Egress to the hub's API (tokens and OAuth are checked there). */}}
{{- define "analoglab-hub.hubEgress" -}}
- to:
    {{- include "analoglab-hub.jupyterhubPeer" (dict "root" . "kind" "hub") | nindent 4 }}
  ports:
    - protocol: TCP
      port: 8081
{{- end -}}
