<?php
// Send one matrix scenario with PHPMailer: php send_phpmailer.php SPEC.json
require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\PHPMailer;

$spec = json_decode(file_get_contents($argv[1]), true);
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = '127.0.0.1';
$mail->Port = $spec['port'];
$mail->SMTPAuth = false;
$mail->SMTPAutoTLS = false;
$mail->Hostname = 'client.test';
$mail->Helo = 'client.test';
$mail->CharSet = PHPMailer::CHARSET_UTF8;
if (isset($spec['tls'])) {
    // A relay with AUTH and TLS: STARTTLS, the certificate checked against the test CA.
    $mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
    $mail->SMTPAuth = true;
    $mail->Username = $spec['tls']['user'];
    $mail->Password = $spec['tls']['password'];
    $mail->SMTPOptions = ['ssl' => ['cafile' => $spec['tls']['ca'], 'verify_peer' => true,
                                    'verify_peer_name' => true]];
}
$mail->setFrom($spec['from'], 'Matrix App');
$mail->addAddress($spec['to']);
foreach ($spec['cc'] as $cc) { $mail->addCC($cc); }
foreach ($spec['bcc'] as $bcc) { $mail->addBCC($bcc); }
$mail->Subject = $spec['subject'];
if ($spec['html'] !== '') {
    $mail->isHTML(true);
    $mail->Body = $spec['html'];
    $mail->AltBody = $spec['text'];
    $mail->addEmbeddedImage($spec['inline'], $spec['cid'], 'logo.png', PHPMailer::ENCODING_BASE64, 'image/png');
} else {
    $mail->Body = $spec['text'];
}
foreach ($spec['files'] as $file) { $mail->addAttachment($file); }
$mail->send();
echo "sent\n";
