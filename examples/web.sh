#!/bin/sh
# web: answers every request with its own name, what `api` answers (reached by service name),
# and whether its secret arrived. busybox httpd runs /cgi-bin/index.cgi for "/".
mkdir -p /www/cgi-bin
cat > /www/cgi-bin/index.cgi <<'CGI'
#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "$GREETING: web $(hostname) -> api $(timeout 3 wget -qO- http://api/ 2>/dev/null || echo unreachable)"
if [ -s /run/secrets/api_token ]; then echo "secret api_token: present"; else echo "secret api_token: missing"; fi
CGI
chmod 755 /www/cgi-bin/index.cgi
rm -f /www/index.html
httpd -f -p 80 -h /www &
pid=$!
trap 'kill $pid; exit 0' TERM INT
wait $pid
