{{/* Names and labels, as `helm create` writes them. */}}
{{- define "pgfanout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pgfanout.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pgfanout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pgfanout.labels" -}}
helm.sh/chart: {{ include "pgfanout.chart" . }}
app.kubernetes.io/name: {{ include "pgfanout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgfanout
{{- end }}

{{/* Selector labels of one role: (dict "root" $ "role" "reader"|"applier"). */}}
{{- define "pgfanout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgfanout.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "pgfanout.applierGroup" -}}
{{- default (printf "%s-appliers" (include "pgfanout.fullname" .)) .Values.kafka.group }}
{{- end }}

{{- define "pgfanout.postgres" -}}
{{- toYaml (dict "url" .Values.postgres.url "slot" .Values.postgres.slot "publication" .Values.postgres.publication) }}
{{- end }}

{{/* A config's sections in the order of docs/configuration.md. */}}
{{- define "pgfanout.sections" -}}
{{- $known := list "source" "sinks" "pipelines" "dead_letter" "http" "runtime" "ha" }}
{{- range $k := $known }}
{{- if hasKey $ $k }}
{{ toYaml (dict $k (get $ $k)) }}
{{- end }}
{{- end }}
{{- with omit $ "source" "sinks" "pipelines" "dead_letter" "http" "runtime" "ha" }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The reader's config: the slot into one Kafka sink, format native with
tombstones (appliers need both), reader.config merged over it.
*/}}
{{- define "pgfanout.readerConfig" -}}
{{- $v := .Values }}
{{- $topics := dict "partitions" (int $v.kafka.partitions) "replication_factor" (int $v.kafka.replicationFactor) }}
{{- $sink := dict "type" "kafka" "brokers" $v.kafka.brokers "topics" $topics }}
{{- $mapping := dict "topic" $v.kafka.topic "format" "native" "tombstones" true }}
{{- $pipeline := dict "name" "to-kafka" "from" $v.reader.tables "to" "kafka" "kafka" $mapping }}
{{- $cfg := dict "source" (dict "postgres" (include "pgfanout.postgres" . | fromYaml)) "sinks" (dict "kafka" $sink) "pipelines" (list $pipeline) "http" (dict "listen" (printf "0.0.0.0:%d" (int $v.http.port))) }}
{{- if $v.reader.ha.enabled }}
{{- $_ := set $cfg "ha" (dict "enabled" true) }}
{{- end }}
{{- include "pgfanout.sections" (mustMergeOverwrite $cfg (deepCopy $v.reader.config)) }}
{{- end }}

{{/*
The appliers' config: source.kafka on the reader's topic, one consumer
group, appliers.config (the stores) merged over it.
*/}}
{{- define "pgfanout.applierConfig" -}}
{{- $v := .Values }}
{{- $kafka := dict "brokers" $v.kafka.brokers "topics" (list $v.kafka.topic) "group" (include "pgfanout.applierGroup" .) "format" "native" }}
{{- $cfg := dict "source" (dict "postgres" (include "pgfanout.postgres" . | fromYaml) "kafka" $kafka) "http" (dict "listen" (printf "0.0.0.0:%d" (int $v.http.port))) }}
{{- if not (hasKey $v.appliers.config "sinks") }}
{{- $_ := set $cfg "sinks" (dict "stdout" (dict "type" "file" "path" "-")) }}
{{- $_ := set $cfg "pipelines" (list (dict "name" "everything" "from" $v.reader.tables "to" "stdout")) }}
{{- end }}
{{- include "pgfanout.sections" (mustMergeOverwrite $cfg (deepCopy $v.appliers.config)) }}
{{- end }}

{{/* The pod template of one role: (dict "root" $ "role" ... "config" ... "resources" ...). */}}
{{- define "pgfanout.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "pgfanout.selectorLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ .config | sha256sum }}
    {{- if $v.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.http.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: pgfanout
      image: "{{ $v.image.repository }}:{{ $v.image.tag | default .root.Chart.AppVersion }}"
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: [run, -c, /etc/pgfanout/config.yaml, --log-format, {{ $v.logFormat | quote }}]
      ports:
        - name: http
          containerPort: {{ $v.http.port }}
          protocol: TCP
      {{- if or $v.postgres.passwordSecret.name $v.env }}
      env:
        {{- if $v.postgres.passwordSecret.name }}
        - name: PGPASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $v.postgres.passwordSecret.name }}
              key: {{ $v.postgres.passwordSecret.key }}
        {{- end }}
        {{- with $v.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with $v.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      livenessProbe:
        {{- toYaml $v.livenessProbe | nindent 8 }}
      readinessProbe:
        {{- toYaml $v.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - { name: config, mountPath: /etc/pgfanout, readOnly: true }
        # The working directory (relative paths: file sinks, dead letters).
        - { name: data, mountPath: /var/lib/pgfanout }
        # Spilled streamed transactions (source.postgres.streaming_spill_dir).
        - { name: tmp, mountPath: /tmp }
  volumes:
    - name: config
      configMap:
        name: {{ include "pgfanout.fullname" .root }}-{{ .role }}
    - { name: data, emptyDir: {} }
    - { name: tmp, emptyDir: {} }
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
