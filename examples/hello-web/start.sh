#!/bin/sh
# The preview's root filesystem is read-only: render the page into /tmp (an emptyDir) and serve
# it from there.
set -e
mkdir -p /tmp/www
cp -R /www/. /tmp/www/
sed "s/@GIT_SHA@/${GIT_SHA:-unknown}/g" /www/index.html > /tmp/www/index.html
exec httpd -f -v -p 8080 -h /tmp/www
