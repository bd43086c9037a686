# Valet's image for docker-compose.yml.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/valet ./cmd/valet

FROM alpine:3.22
RUN adduser -D -u 10001 valet && mkdir /data && chown valet /data
COPY --from=build /out/valet /usr/local/bin/valet
USER valet
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/valet"]
