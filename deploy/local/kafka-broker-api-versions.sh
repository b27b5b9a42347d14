#!/bin/sh
# The stand-in's copy of Kafka's tool of the same name (the docker-compose healthcheck runs it).
exec java -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties -Xmx128m \
  -cp '/opt/kafka/libs/*' kafka.admin.BrokerApiVersionsCommand "$@"
