# Valet's image for docker-compose.yml.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# scripts/release passes the version and commit; without them `valet
# version` reports what Go recorded (the module version, "(devel)").
ARG VERSION=""
ARG COMMIT=""
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/valet ./cmd/valet

FROM alpine:3.22
RUN adduser -D -u 10001 valet && mkdir /data && chown valet /data
COPY --from=build /out/valet /usr/local/bin/valet
USER valet
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/valet"]
