// The console's only script: the live view's and the progress bar's polls.
// Everything it shows goes in with textContent, never as HTML.
"use strict";
(function () {
  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    });
  }

  var live = document.getElementById("live");
  if (live) {
    var body = live.querySelector("tbody");
    var cursor = "";
    var fields = ["time", "type", "outcome", "actor", "task_id", "template", "reason"];
    var pollLive = function () {
      getJSON(live.dataset.src + "?after=" + encodeURIComponent(cursor)).then(function (d) {
        cursor = d.cursor || cursor;
        d.events.forEach(function (e) {
          var tr = document.createElement("tr");
          tr.className = "ev ev-" + (e.outcome || "ok");
          fields.forEach(function (f) {
            var td = document.createElement("td");
            if (f === "task_id" && e.task_id) {
              var a = document.createElement("a");
              a.href = "/console/tasks/" + encodeURIComponent(e.task_id);
              a.textContent = e.task_id;
              td.appendChild(a);
            } else {
              td.textContent = e[f] || "";
            }
            tr.appendChild(td);
          });
          body.insertBefore(tr, body.firstChild);
        });
        while (body.rows.length > 200) { body.deleteRow(body.rows.length - 1); }
      }).catch(function () {}).finally(function () { setTimeout(pollLive, 2000); });
    };
    pollLive();
  }

  var job = document.getElementById("job");
  if (job) {
    var set = function (id, v) { document.getElementById(id).textContent = String(v); };
    var pollJob = function () {
      getJSON(job.dataset.src).then(function (d) {
        var bar = document.getElementById("progress");
        bar.value = d.percent;
        bar.textContent = d.percent + "%";
        set("jobstate", d.state);
        set("jobrevoked", d.revoked);
        set("jobmatched", d.matched);
        set("jobtasks", d.tasks_matched);
        set("jobfailed", d.failed);
        if (d.state !== "done") { setTimeout(pollJob, 500); } else { job.classList.add("done"); }
      }).catch(function () { setTimeout(pollJob, 2000); });
    };
    pollJob();
  }
})();
